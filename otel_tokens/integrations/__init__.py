"""One module per instrumented library; each holds only what is specific to that library.

The contract an integration module meets (the instrumentor relies on nothing else):

- `REQUIREMENT`: the pip requirement of the library it instruments (`openai >= 1.26`); any one
  installed is enough to load the package (pyproject's `instruments-any` extra says the same).
- `instrument(recorder)`: patch the library (lazily, on import, with `wrapt`), keeping what it
  needs on one state object of its own, not in module globals; calling it again is harmless.
- `uninstrument()`: undo it; calls made afterwards go straight to the library.

A wrapper reads the library's arguments and result, and goes through the recorder's lifecycle:

    call = recorder.begin(operation, provider, model, span_kind, ..., estimate=lambda: ...)
    with call:                                 # span current; an exception finishes the call
        result = wrapped(*args, **{**kwargs, "model": call.model})
    call.record.input_tokens, ... = ...       # what the result says (or a stream, when it ends)
    recorder.finish(call)                      # exactly once; later calls are ignored

`begin` raises only the quota refusal, already recorded, and the wrapper lets it pass; on any
internal failure it returns an inert call, so the library call still goes ahead. `call.model` is
the model to send (the guard may have downgraded it; `downgradable=False` where it cannot be
swapped). `estimate` (the prompt's tokens, the output limit, the number of choices) is computed
only by a guard that must reserve a worst case. Outgoing HTTP headers come from
`recorder.outgoing_headers(call)`.

A wrapper never touches a tracer, meter, span or context, never builds attribute dicts, and names
neither the guard nor its decisions or errors: attribution, quota decisions, pricing, metrics and
the span are the recorder's. It never lets its own exception reach the caller (log it with
`logs.internal_error`), and lets the caller's exceptions pass unchanged.
"""
