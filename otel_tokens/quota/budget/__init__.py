"""Budget mode: hard quotas kept in a shared store (Redis, Valkey, Redis Cluster).

Every call reserves its worst case atomically before it is sent and settles to its true usage
after, so no principal crosses a limit by more than the estimation error of its calls in flight,
whatever the number of processes and replicas. `bounds` runs on the call path without the store;
`store` is the only module that talks to Redis; `mode` ties them to the recorder's lifecycle.
"""
