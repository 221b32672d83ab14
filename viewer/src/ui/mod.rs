//! The egui UI. Every panel draws from a [`crate::source::View`] (the model and the last events)
//! and keeps its own state in [`app::UiState`]; nothing here changes the model.

pub mod app;
pub mod event_log;
mod heaps;
mod inspector;
pub mod learn;
pub mod markers;
mod occupancy;
mod overview;
pub mod picker;
mod segment_map;
pub mod site_pages;
pub mod sites;
pub mod style;
mod throttle;
pub mod timeline;

pub use app::{App, Source, Tab, UiState};

/// The window's initial size: fits a 1280x800 screen.
pub const WINDOW_SIZE: [f32; 2] = [1280.0, 800.0];

/// Opens the viewer in a window and runs until it is closed.
pub fn run(app: App) -> Result<(), String> {
    let title = app.title();
    let options = eframe::NativeOptions {
        viewport: eframe::egui::ViewportBuilder::default()
            .with_title(title.clone())
            .with_inner_size(WINDOW_SIZE)
            .with_min_inner_size([900.0, 600.0]),
        ..Default::default()
    };
    eframe::run_native(&title, options, Box::new(|_cc| Ok(Box::new(app))))
        .map_err(|e| e.to_string())
}

/// Opens the process picker of a recording of many processes in a window and runs until it is
/// closed.
pub fn run_picker(picker: picker::Picker) -> Result<(), String> {
    let title = picker.title();
    let options = eframe::NativeOptions {
        viewport: eframe::egui::ViewportBuilder::default()
            .with_title(title.clone())
            .with_inner_size(WINDOW_SIZE)
            .with_min_inner_size([900.0, 600.0]),
        ..Default::default()
    };
    eframe::run_native(&title, options, Box::new(|_cc| Ok(Box::new(picker))))
        .map_err(|e| e.to_string())
}

/// Whether a window can be opened here (a display is set).
pub fn display_available() -> bool {
    std::env::var_os("DISPLAY").is_some_and(|d| !d.is_empty())
        || std::env::var_os("WAYLAND_DISPLAY").is_some_and(|d| !d.is_empty())
}
