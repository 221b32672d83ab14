//! `heaplens export`: a trace in the formats other tools read.

pub mod parquet;
