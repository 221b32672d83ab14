//! heaplens-viewer: the trace model (a shadow of the allocator rebuilt from events), trace file
//! I/O, event sources and the egui UI. The model is kept free of egui so it can be tested and
//! benchmarked on its own; the UI only draws from it.

pub mod backlog;
pub mod describe;
pub mod export;
pub mod insights;
pub mod model;
pub mod source;
pub mod symbols;
pub mod teach;
pub mod trace;
pub mod ui;
pub mod units;
