"""One module per instrumented library; each holds only what is specific to that library."""
