//! Work a frame should not redo every time: a scan of every page or every live block, whose
//! inputs move on at every frame while a program streams events or a replay plays. It is done
//! again at once when what it is about changes, and at most four times a second when only the
//! model has moved on.

use std::sync::Arc;
use std::time::Duration;

use eframe::egui;

/// How long the result of work stands while only the model moves on.
const EVERY: Duration = Duration::from_millis(250);

/// The value `compute` made for `what` at model position `at`, kept in `ui`'s memory under
/// `salt`: made again when `what` changes, or when `at` has changed and the value is older than
/// [`EVERY`] (the frame then asks for another once it is).
pub fn throttled<K, V>(
    ui: &egui::Ui,
    salt: &str,
    what: K,
    at: u64,
    compute: impl FnOnce() -> V,
) -> Arc<V>
where
    K: PartialEq + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    struct Kept<K, V> {
        what: K,
        at: u64,
        made: f64,
        value: Arc<V>,
    }
    impl<K: Clone, V> Clone for Kept<K, V> {
        fn clone(&self) -> Self {
            Self {
                what: self.what.clone(),
                at: self.at,
                made: self.made,
                value: Arc::clone(&self.value),
            }
        }
    }
    let id = ui.make_persistent_id(salt);
    let now = ui.input(|i| i.time);
    let kept: Option<Kept<K, V>> = ui.data(|d| d.get_temp(id));
    if let Some(k) = kept
        && k.what == what
        && (k.at == at || now - k.made < EVERY.as_secs_f64())
    {
        if k.at != at {
            ui.ctx().request_repaint_after(EVERY);
        }
        return k.value;
    }
    let value = Arc::new(compute());
    let kept = Kept {
        what,
        at,
        made: now,
        value: Arc::clone(&value),
    };
    ui.data_mut(|d| d.insert_temp(id, kept));
    value
}
