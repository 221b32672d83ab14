//! Workloads that tell a story about an allocator: fragmentation, cross-thread frees, thread
//! churn, a server simulation, leaks, large and huge blocks.
