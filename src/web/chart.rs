//! Line charts as inline SVG, drawn by the server: no script draws them, so the page stays
//! plain HTMX under a Content-Security-Policy that allows no inline style. Colours and fonts
//! come from classes in `style.css`; the SVG carries geometry and presentation attributes only.

use std::time::Duration;

use super::escape;
use crate::metrics::history::Point;

/// The drawing's size in SVG units (it scales to the width of its box).
const WIDTH: f64 = 320.0;
const HEIGHT: f64 = 120.0;
/// The plot area inside it: room for the value labels on the left and the time labels below.
const LEFT: f64 = 44.0;
const RIGHT: f64 = WIDTH - 6.0;
const TOP: f64 = 8.0;
const BOTTOM: f64 = HEIGHT - 18.0;

/// What a chart's values are, for its labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    PerSecond,
    Seconds,
    Bytes,
}

impl Unit {
    /// A value as a label: `12`, `3.5/s`, `1.2 ms`, `48 MiB`.
    pub fn format(self, v: f64) -> String {
        let label = self.format_padded(v);
        // `2.50/s` is `2.5/s`, and `5.0 ms` is `5 ms`.
        let digits_end = label
            .find(|c: char| !c.is_ascii_digit() && c != '.' && c != '-')
            .unwrap_or(label.len());
        let (number, unit) = label.split_at(digits_end);
        if number.contains('.') {
            let number = number.trim_end_matches('0').trim_end_matches('.');
            format!("{number}{unit}")
        } else {
            label
        }
    }

    fn format_padded(self, v: f64) -> String {
        match self {
            Unit::Count => short(v),
            Unit::PerSecond => format!("{}/s", short(v)),
            Unit::Seconds => {
                let ms = v * 1e3;
                match ms {
                    ms if ms < 1.0 => format!("{ms:.2} ms"),
                    ms if ms < 10.0 => format!("{ms:.1} ms"),
                    ms if ms < 1000.0 => format!("{ms:.0} ms"),
                    _ => format!("{v:.1} s"),
                }
            }
            Unit::Bytes => {
                let mib = v / f64::from(1 << 20);
                match mib {
                    mib if mib >= 1024.0 => format!("{:.1} GiB", mib / 1024.0),
                    mib if mib >= 100.0 => format!("{mib:.0} MiB"),
                    mib => format!("{mib:.1} MiB"),
                }
            }
        }
    }

    /// The top of the scale for values up to `max`: a round number in the unit's terms.
    fn ceiling(self, max: f64) -> f64 {
        match self {
            Unit::Bytes => {
                let mib = f64::from(1 << 20);
                round_up(max / mib) * mib
            }
            // A latency scale starts at a millisecond: below it every line hugs the top.
            Unit::Seconds => round_up(max.max(0.001)),
            Unit::Count | Unit::PerSecond => round_up(max.max(1.0)),
        }
    }
}

/// A span of time as the charts label it: `30 s`, `2 min`.
fn duration(d: Duration) -> String {
    match d.as_secs() {
        s if s < 60 => format!("{s} s"),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{:.1} min", s as f64 / 60.0),
    }
}

/// `v` without needless decimals, and with `k` or `M` past ten thousand.
fn short(v: f64) -> String {
    match v.abs() {
        a if a >= 1e7 => format!("{:.0}M", v / 1e6),
        a if a >= 1e4 => format!("{:.0}k", v / 1e3),
        a if a >= 100.0 || v.fract() == 0.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

/// The smallest of 1, 2, 2.5 and 5 times a power of ten that is at least `v` (1 for nothing).
fn round_up(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let power = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&top| top >= v * (1.0 - 1e-12))
        .unwrap_or(10.0 * power)
}

/// One series of a chart.
pub struct Line<'a> {
    pub label: &'a str,
    pub points: &'a [Point],
}

/// A chart of `lines` over the last `span` (now at the right edge), as a `<figure>`: its title
/// and each line's latest value above, the SVG below. Up to four lines, told apart by their
/// classes `s0` to `s3`.
pub fn chart(title: &str, unit: Unit, span: Duration, lines: &[Line<'_>]) -> String {
    let span_secs = span.as_secs_f64().max(1.0);
    let visible = |p: &&Point| p.ago <= span;
    let max = lines
        .iter()
        .flat_map(|l| l.points.iter().filter(visible))
        .filter_map(|p| p.value)
        .fold(0.0, f64::max);
    let top = unit.ceiling(max);
    let x = |ago: Duration| RIGHT - (ago.as_secs_f64() / span_secs) * (RIGHT - LEFT);
    let y = |v: f64| BOTTOM - (v.clamp(0.0, top) / top) * (BOTTOM - TOP);

    let mut html = String::with_capacity(4096);
    html.push_str("<figure class=\"chart\"><figcaption><span class=\"chart-title\">");
    html.push_str(&escape(title));
    html.push_str("</span><span class=\"legend\">");
    for (i, line) in lines.iter().enumerate() {
        let latest = line
            .points
            .iter()
            .rev()
            .find_map(|p| p.value)
            .map_or_else(|| "–".to_string(), |v| unit.format(v));
        html.push_str(&format!(
            "<span class=\"key s{i}\">{} <b>{}</b></span>",
            escape(line.label),
            escape(&latest)
        ));
    }
    html.push_str(&format!(
        "</span></figcaption><svg class=\"plot\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" \
         aria-label=\"{} over the last {}\">",
        escape(title),
        duration(span)
    ));
    // The scale: lines at 0, half and the top, labelled; the time at both ends.
    html.push_str("<g class=\"grid\">");
    for fraction in [0.0, 0.5, 1.0] {
        let v = top * fraction;
        html.push_str(&format!(
            "<line x1=\"{LEFT}\" x2=\"{RIGHT}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{label}</text>",
            y = y(v),
            tx = LEFT - 4.0,
            ty = y(v) + 3.0,
            label = escape(&unit.format(v)),
        ));
    }
    html.push_str(&format!(
        "<text x=\"{LEFT}\" y=\"{ty}\">−{}</text>\
         <text x=\"{RIGHT}\" y=\"{ty}\" text-anchor=\"end\">now</text></g>",
        duration(span),
        ty = HEIGHT - 4.0,
    ));
    let mut drawn = false;
    for (i, line) in lines.iter().enumerate() {
        let d = path(line.points.iter().filter(visible), &x, &y);
        if !d.is_empty() {
            drawn = true;
            html.push_str(&format!("<path class=\"line s{i}\" d=\"{d}\"/>"));
        }
    }
    if !drawn {
        html.push_str(&format!(
            "<text class=\"empty\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">nothing yet</text>",
            (LEFT + RIGHT) / 2.0,
            (TOP + BOTTOM) / 2.0
        ));
    }
    html.push_str("</svg></figure>");
    html
}

/// The `d` of a line through `points`, with a gap wherever a value is missing; a lone point
/// between gaps is a zero-length segment, which the round line cap draws as a dot.
fn path<'a>(
    points: impl Iterator<Item = &'a Point>,
    x: &impl Fn(Duration) -> f64,
    y: &impl Fn(f64) -> f64,
) -> String {
    let mut d = String::new();
    let mut pen_down = false;
    let mut segment_len = 0;
    for p in points {
        match p.value {
            Some(v) => {
                let command = if pen_down { 'L' } else { 'M' };
                d.push_str(&format!("{command}{:.1} {:.1}", x(p.ago), y(v)));
                pen_down = true;
                segment_len += 1;
            }
            None => {
                if segment_len == 1 {
                    d.push_str("h0");
                }
                pen_down = false;
                segment_len = 0;
            }
        }
    }
    if segment_len == 1 {
        d.push_str("h0");
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(values: &[Option<f64>]) -> Vec<Point> {
        let n = values.len() as u64;
        values
            .iter()
            .enumerate()
            .map(|(i, &value)| Point {
                ago: Duration::from_secs(2 * (n - 1 - i as u64)),
                value,
            })
            .collect()
    }

    #[test]
    fn a_chart_is_svg_with_a_path_per_line_and_no_style() {
        let a = points(&[Some(1.0), Some(3.0), Some(2.0)]);
        let b = points(&[None, Some(0.5), None]);
        let html = chart(
            "Messages / s",
            Unit::PerSecond,
            Duration::from_secs(300),
            &[
                Line {
                    label: "published",
                    points: &a,
                },
                Line {
                    label: "delivered",
                    points: &b,
                },
            ],
        );
        assert!(html.starts_with("<figure class=\"chart\">"), "{html}");
        assert!(html.contains("<svg class=\"plot\" viewBox=\"0 0 320 120\""));
        assert!(html.contains("<path class=\"line s0\" d=\"M"));
        // A lone value between gaps is still drawn.
        assert!(html.contains("<path class=\"line s1\" d=\"M"));
        assert!(html.contains("h0\"/>"));
        assert!(html.contains("published <b>2/s</b>"), "{html}");
        assert!(html.contains("delivered <b>0.5/s</b>"), "{html}");
        assert!(html.contains(">−5 min</text>"), "{html}");
        assert!(
            !html.contains("style"),
            "the CSP allows no inline style: {html}"
        );
        // The scale's top is a round number above the largest value.
        assert!(html.contains(">5/s</text>"), "{html}");
    }

    #[test]
    fn a_chart_without_values_says_so() {
        let none = points(&[None, None]);
        let html = chart(
            "Delivery latency",
            Unit::Seconds,
            Duration::from_secs(300),
            &[Line {
                label: "p99",
                points: &none,
            }],
        );
        assert!(!html.contains("<path"));
        assert!(html.contains("nothing yet"));
        assert!(html.contains("p99 <b>–</b>"));
    }

    #[test]
    fn points_older_than_the_span_are_left_out() {
        let old = vec![
            Point {
                ago: Duration::from_secs(400),
                value: Some(100.0),
            },
            Point {
                ago: Duration::from_secs(10),
                value: Some(1.0),
            },
            Point {
                ago: Duration::ZERO,
                value: Some(1.0),
            },
        ];
        let html = chart(
            "Connections",
            Unit::Count,
            Duration::from_secs(300),
            &[Line {
                label: "open",
                points: &old,
            }],
        );
        assert!(
            html.contains(">1</text>"),
            "the scale ignores the old 100: {html}"
        );
        let d = html
            .split("class=\"line s0\" d=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap();
        assert_eq!(d.matches('L').count(), 1, "{d}");
    }

    #[test]
    fn labels_are_round_and_in_the_unit() {
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9 * b.abs().max(1.0);
        assert!(near(round_up(0.0), 1.0));
        assert!(near(round_up(3.0), 5.0));
        assert!(near(round_up(20.0), 20.0));
        assert!(near(round_up(21.0), 25.0));
        assert!(near(round_up(0.0031), 0.005));
        assert_eq!(Unit::Seconds.format(0.000_25), "0.25 ms");
        assert_eq!(Unit::Seconds.format(0.0123), "12 ms");
        assert_eq!(Unit::Seconds.format(2.5), "2.5 s");
        assert_eq!(Unit::Seconds.format(0.005), "5 ms");
        assert_eq!(Unit::Seconds.format(0.0), "0 ms");
        assert_eq!(Unit::Bytes.format(0.0), "0 MiB");
        assert_eq!(Unit::Bytes.format(48.0 * 1048576.0), "48 MiB");
        assert_eq!(Unit::Bytes.format(15.94 * 1048576.0), "15.9 MiB");
        assert_eq!(Unit::Bytes.format(3.0 * 1073741824.0), "3 GiB");
        assert_eq!(Unit::Count.format(0.5), "0.5");
        assert_eq!(duration(Duration::from_secs(30)), "30 s");
        assert_eq!(duration(Duration::from_secs(120)), "2 min");
        assert_eq!(Unit::Count.format(12.0), "12");
        assert_eq!(Unit::Count.format(25_000.0), "25k");
        assert_eq!(Unit::PerSecond.format(2.5), "2.5/s");
        assert_eq!(Unit::PerSecond.format(20.0), "20/s");
    }
}
