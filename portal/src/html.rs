//! HTML building blocks: escaping (every piece of user-controlled text goes
//! through [`esc`]), human-readable sizes and times, and the page frame.

use std::fmt::Write as _;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value.
pub fn url_value(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `1.4 MiB`: powers of 1024, as `docker images` and `du -h` think.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if v < 10.0 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}

fn datetime(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// RFC 3339 in UTC, for the API and `<time datetime>`.
pub fn rfc3339(ms: i64) -> String {
    datetime(ms)
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// `2026-11-27 05:45 UTC`: what a person reads.
pub fn display_time(ms: i64) -> String {
    match datetime(ms) {
        Some(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        None => "—".into(),
    }
}

/// A `<time>` element: readable text, exact instant in the attribute.
pub fn time_element(ms: i64) -> String {
    format!(
        "<time datetime=\"{}\">{}</time>",
        rfc3339(ms),
        display_time(ms)
    )
}

/// Platform badges (`linux/arm64`), or a dash.
pub fn platforms(list: &[String]) -> String {
    if list.is_empty() {
        return "<span class=\"muted\">—</span>".into();
    }
    let mut out = String::new();
    for p in list {
        let _ = write!(out, "<span class=\"badge\">{}</span>", esc(p));
    }
    out
}

/// Who is signed in, for the top bar and the forms of a page.
#[derive(Debug)]
pub struct Viewer<'a> {
    pub subject: &'a str,
    pub role: &'a str,
    pub csrf: &'a str,
}

/// The frame of every page: head (with the anti-CSRF token for the
/// script), top bar, and `main`.
pub fn page(title: &str, viewer: Option<&Viewer<'_>>, main: &str) -> String {
    let mut out = String::with_capacity(main.len() + 2048);
    out.push_str("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    if let Some(v) = viewer {
        let _ = writeln!(
            out,
            "<meta name=\"csrf-token\" content=\"{}\">",
            esc(v.csrf)
        );
    }
    let _ = writeln!(out, "<title>{} · Berth</title>", esc(title));
    out.push_str("<link rel=\"icon\" href=\"/assets/favicon.svg\" type=\"image/svg+xml\">\n");
    out.push_str("<link rel=\"stylesheet\" href=\"/assets/portal.css\">\n");
    out.push_str("<script src=\"/assets/portal.js\" defer></script>\n</head>\n<body>\n");
    out.push_str("<header class=\"topbar\">\n<a class=\"brand\" href=\"/repositories\">");
    out.push_str(
        "<img src=\"/assets/favicon.svg\" alt=\"\" width=\"22\" height=\"22\"> Berth</a>\n",
    );
    if let Some(v) = viewer {
        out.push_str(
            "<nav><a href=\"/repositories\">Repositories</a> <a href=\"/nodes\" id=\"nav-nodes\">Nodes</a></nav>\n",
        );
        let _ = writeln!(
            out,
            "<div class=\"who\"><span class=\"user\">{}</span> <span class=\"role\">{}</span>\
             <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\" class=\"link\" id=\"sign-out\">Sign out</button></form></div>",
            esc(v.subject),
            esc(v.role),
            esc(v.csrf)
        );
    }
    out.push_str("</header>\n<main>\n");
    out.push_str(main);
    out.push_str("\n</main>\n</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<script>"a" & 'b'</script>"#),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(15 << 20), "15 MiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(display_time(1_700_000_000_000), "2023-11-14 22:13 UTC");
    }
}
