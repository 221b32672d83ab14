//! Marker labels that never overlap, in the overview's plots and under the timeline: each label
//! takes the first row where it fits whole; when none is free it takes a row where the label
//! before it can be shortened, and that one is elided with "…"; a marker with no room at all
//! is counted on the label before it ("+2"). Hovering a label shows every marker it stands for,
//! in full, with its time.

use eframe::egui::{self, Color32, FontId, Rect, RichText};

use super::style;
use crate::model::Marker;
use crate::units;

/// Rows of labels at most.
pub const ROWS: usize = 3;
/// Space kept between two labels of a row, in points.
const GAP: f32 = 6.0;

/// One label placed: the markers it stands for (indices), its row, where it starts, and the
/// text shown (the first marker's label, elided to its room, with a count of the others).
#[derive(Clone, Debug, PartialEq)]
pub struct Placed {
    /// Indices into the markers given, the first one labelled.
    pub markers: Vec<usize>,
    /// Row, from 0 at the top.
    pub row: usize,
    /// Left edge of the label.
    pub x: f32,
    /// What is shown.
    pub text: String,
}

/// Places labels for markers at `xs` (ascending) with texts `labels`, between `left` and
/// `right`; `width` measures a text.
pub fn layout(
    xs: &[f32],
    labels: &[&str],
    right: f32,
    rows: usize,
    width: &dyn Fn(&str) -> f32,
) -> Vec<Placed> {
    // The least a squeezed label keeps (a few words); tighter, a marker is counted instead.
    let min_w = width("Marker 1…");
    // Per row: the index (into `placed`) of its last label, and where that label ends whole.
    let mut last: Vec<Option<(usize, f32)>> = vec![None; rows.max(1)];
    let mut placed: Vec<Placed> = Vec::new();
    for (i, (&x, label)) in xs.iter().zip(labels).enumerate() {
        let free = last
            .iter()
            .position(|l| l.is_none_or(|(_, end)| end + GAP <= x));
        let squeeze = || {
            last.iter()
                .enumerate()
                .filter_map(|(r, l)| l.map(|(p, _)| (r, placed[p].x)))
                .filter(|&(_, px)| px + min_w + GAP <= x)
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(r, _)| r)
        };
        let Some(row) = free.or_else(squeeze) else {
            if let Some(p) = placed.last_mut() {
                p.markers.push(i);
            }
            continue;
        };
        last[row] = Some((placed.len(), x + width(label)));
        placed.push(Placed {
            markers: vec![i],
            row,
            x,
            text: String::new(),
        });
    }
    // Each label's room ends where the next label of its row starts.
    for k in 0..placed.len() {
        let (row, x) = (placed[k].row, placed[k].x);
        let next = placed[k + 1..]
            .iter()
            .find(|p| p.row == row)
            .map_or(right, |p| p.x - GAP);
        let more = placed[k].markers.len() - 1;
        let suffix = if more > 0 {
            format!(" +{more}")
        } else {
            String::new()
        };
        let room = (next - x - width(&suffix)).max(0.0);
        placed[k].text = format!(
            "{}{suffix}",
            elide(labels[placed[k].markers[0]], room, width)
        );
    }
    placed
}

/// `text` cut to `room` points with "…" at the end when it does not fit whole.
pub fn elide(text: &str, room: f32, width: &dyn Fn(&str) -> f32) -> String {
    if width(text) <= room {
        return text.to_owned();
    }
    let chars: Vec<char> = text.chars().collect();
    // The longest prefix that fits with its ellipsis (at least one character).
    let (mut lo, mut hi) = (1, chars.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        let s: String = chars[..mid].iter().chain(['…'].iter()).collect();
        if width(&s) <= room {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    chars[..lo].iter().chain(['…'].iter()).collect()
}

/// The font marker labels are drawn in.
pub fn font() -> FontId {
    FontId::proportional(11.0)
}

/// Height of one row of labels.
pub fn row_height() -> f32 {
    14.0
}

/// The markers inside `span` (screen x) with their x, and the layout of their labels.
fn plan(
    ui: &egui::Ui,
    span: std::ops::RangeInclusive<f32>,
    markers: &[Marker],
    x_of: &dyn Fn(&Marker) -> Option<f32>,
    rows: usize,
) -> (Vec<usize>, Vec<Placed>) {
    let shown: Vec<(usize, f32)> = markers
        .iter()
        .enumerate()
        .filter_map(|(i, m)| x_of(m).map(|x| (i, x)))
        .filter(|(_, x)| span.contains(x))
        .collect();
    let xs: Vec<f32> = shown.iter().map(|&(_, x)| x + 2.0).collect();
    let labels: Vec<&str> = shown
        .iter()
        .map(|&(i, _)| markers[i].label.as_str())
        .collect();
    let placed = layout(&xs, &labels, *span.end(), rows, &|s| text_width(ui, s));
    (shown.into_iter().map(|(i, _)| i).collect(), placed)
}

fn text_width(ui: &egui::Ui, s: &str) -> f32 {
    ui.painter()
        .layout_no_wrap(s.to_owned(), font(), Color32::WHITE)
        .size()
        .x
}

/// How many rows the labels of `markers` take within `span`.
pub fn rows_needed(
    ui: &egui::Ui,
    span: std::ops::RangeInclusive<f32>,
    markers: &[Marker],
    x_of: &dyn Fn(&Marker) -> Option<f32>,
    rows: usize,
) -> usize {
    let (_, placed) = plan(ui, span, markers, x_of, rows);
    placed.iter().map(|p| p.row + 1).max().unwrap_or(0)
}

/// Draws labels for `markers` in the top rows of `rect`, each marker at the x `x_of` gives
/// (None: not shown). Labels are widgets: hovering one shows the markers it stands for; the
/// index (in `markers`) of the first of them is returned when its label is clicked.
pub fn draw(
    ui: &mut egui::Ui,
    rect: Rect,
    markers: &[Marker],
    x_of: &dyn Fn(&Marker) -> Option<f32>,
    rows: usize,
) -> Option<usize> {
    let (shown, placed) = plan(ui, rect.left()..=rect.right(), markers, x_of, rows);
    let mut clicked = None;
    for p in placed {
        let top = rect.top() + p.row as f32 * row_height();
        let w = text_width(ui, &p.text) + 1.0;
        let r = Rect::from_min_size(egui::pos2(p.x, top), egui::vec2(w, row_height()));
        let hover: Vec<String> = p
            .markers
            .iter()
            .map(|&k| {
                let m = &markers[shown[k]];
                format!("{}  {}", units::seconds(m.time), m.label)
            })
            .collect();
        // A backing so the lines of other markers pass behind the text, not through it.
        let backing = ui.visuals().extreme_bg_color.gamma_multiply(0.85);
        ui.painter().rect_filled(r, 2.0, backing);
        // The marker's own line beside its label, where it stands.
        ui.painter().line_segment(
            [
                egui::pos2(p.x - 2.0, top),
                egui::pos2(p.x - 2.0, top + row_height()),
            ],
            egui::Stroke::new(1.5, style::MARKER),
        );
        let label = ui
            .place(
                r,
                egui::Label::new(RichText::new(&p.text).font(font()).color(style::MARKER))
                    .selectable(false)
                    .sense(egui::Sense::click())
                    .wrap_mode(egui::TextWrapMode::Extend),
            )
            .on_hover_text(format!("Marker:\n{}", hover.join("\n")));
        if label.clicked() {
            clicked = p.markers.first().map(|&k| shown[k]);
        }
    }
    clicked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> f32 {
        6.0 * s.chars().count() as f32
    }

    #[test]
    fn close_markers_go_to_rows_of_their_own_and_keep_their_labels() {
        let p = layout(&[100.0, 100.3], &["phase one", "phase two"], 1000.0, 3, &w);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].row, p[1].row), (0, 1));
        assert_eq!(
            (p[0].text.as_str(), p[1].text.as_str()),
            ("phase one", "phase two")
        );
    }

    #[test]
    fn labels_of_a_row_are_elided_before_the_next_and_extra_markers_are_counted() {
        let xs = [0.0, 1.0, 2.0, 60.0, 61.0];
        let labels = [
            "a long label 0",
            "a long label 1",
            "a long label 2",
            "fourth",
            "fifth",
        ];
        let p = layout(&xs, &labels, 1000.0, 3, &w);
        // 0, 1, 2 fill the three rows; 60 squeezes the first row's label, 61 the second's.
        let rows: Vec<usize> = p.iter().map(|p| p.row).collect();
        assert_eq!(rows, [0, 1, 2, 0, 1]);
        assert!(p[0].text.ends_with('…') && w(&p[0].text) <= 60.0 - GAP);
        assert!(p[1].text.ends_with('…'));
        assert_eq!(p[3].text, "fourth");
        // A fourth marker at the same place as three others has no row left: counted on the one before.
        let p = layout(&[0.0, 0.0, 0.0, 0.0], &["a", "b", "c", "d"], 1000.0, 3, &w);
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].markers, [2, 3]);
        assert_eq!(p[2].text, "c +1");
        // No two labels of a row overlap.
        for a in &p {
            for b in p.iter().filter(|b| b.row == a.row && b.x > a.x) {
                assert!(a.x + w(&a.text) <= b.x);
            }
        }
    }

    #[test]
    fn elide_cuts_with_an_ellipsis() {
        assert_eq!(elide("abcdef", 100.0, &w), "abcdef");
        assert_eq!(elide("abcdef", 24.0, &w), "abc…");
        assert_eq!(elide("abcdef", 1.0, &w), "a…");
    }
}
