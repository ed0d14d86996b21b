"""Multi-model endpoints: many models under one prefix, loaded on demand into a memory-aware
LRU cache (cache.py), listed from the prefix (repository.py), and routed to the replica that
holds them by rendezvous hashing (rendezvous.py: shared with local mode's router)."""
