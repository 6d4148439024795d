"""The call path: one call's record and lifecycle (`call`), the recorder that turns it into spans and
metric points (`recorder`), the counters it feeds (`accounting`) and their cardinality bounds."""
