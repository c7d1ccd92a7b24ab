//! The bodies of the Repositories and repository pages: tables, toolbars,
//! the namespace and Docker Login panels and the delete dialog. Every name,
//! tag, digest and media type is escaped on its way in.

use std::fmt::Write as _;

use registry::{RepoName, TagDetail};

use crate::api::{ListParams, Listing};
use crate::html::{esc, human_size, platforms, time_element, url_value};

pub struct RepositoriesView<'a> {
    pub list: &'a Listing,
    pub params: &'a ListParams,
    /// 1-based position of the first row, for "Showing 51–100 of N".
    pub start: u64,
    pub namespace: &'a str,
    pub host: &'a str,
    pub can_delete: bool,
}

pub struct RepositoryView<'a> {
    pub repo: &'a RepoName,
    pub tags: &'a [TagDetail],
    pub namespace: &'a str,
    pub host: &'a str,
    pub can_delete: bool,
}

fn size_cell(bytes: u64) -> String {
    format!(
        "<td class=\"num\" title=\"{bytes} bytes\">{}</td>",
        human_size(bytes)
    )
}

/// `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A link to the listing keeping the filter; `after` starts at row `start`.
fn listing_link(q: Option<&str>, after: Option<&str>, start: u64) -> String {
    let mut parts = Vec::new();
    if let Some(q) = q {
        parts.push(format!("q={}", url_value(q)));
    }
    if let Some(a) = after {
        parts.push(format!("after={}", url_value(a)));
        parts.push(format!("start={start}"));
    }
    if parts.is_empty() {
        "/repositories".into()
    } else {
        // Escaped for the href attribute it lands in.
        format!("/repositories?{}", parts.join("&amp;"))
    }
}

/// The Actions menu; without the role, Delete is shown disabled and says why.
fn actions_menu(can_delete: bool, what: &str) -> String {
    let (state, title) = if can_delete {
        (
            "disabled data-allowed=\"true\"",
            format!("Select {what} first"),
        )
    } else {
        (
            "disabled data-allowed=\"false\"",
            "Only account admins can delete".to_owned(),
        )
    };
    format!(
        "<details class=\"menu\" id=\"actions\">\n<summary class=\"button\">Actions</summary>\n\
         <div class=\"menu-items\"><button type=\"button\" id=\"action-delete\" {state} \
         title=\"{}\">Delete</button></div>\n</details>",
        esc(&title)
    )
}

/// The typed-confirmation dialog; the script fills in one field per
/// selected name and enables Confirm only when each matches exactly.
const DELETE_DIALOG: &str = "<dialog id=\"delete-dialog\" aria-labelledby=\"delete-title\">\n\
<form method=\"dialog\" id=\"delete-form\">\n\
<h2 id=\"delete-title\">Delete</h2>\n\
<p id=\"delete-intro\"></p>\n\
<div id=\"delete-items\" class=\"stack\"></div>\n\
<p class=\"error\" id=\"delete-error\" role=\"alert\" hidden></p>\n\
<div class=\"buttons\"><button type=\"button\" id=\"delete-cancel\">Cancel</button>\
<button type=\"submit\" id=\"delete-confirm\" class=\"danger\" disabled>Confirm</button></div>\n\
</form>\n</dialog>";

fn repository_rows(out: &mut String, v: &RepositoriesView<'_>) {
    for r in &v.list.repositories {
        let name = esc(&r.name);
        // The namespace is the same on every row: shown faint, the path bold.
        let path = r
            .name
            .strip_prefix(v.namespace)
            .and_then(|p| p.strip_prefix('/'))
            .map(|p| {
                format!(
                    "<span class=\"ns\">{}/</span><strong>{}</strong>",
                    esc(v.namespace),
                    esc(p)
                )
            })
            .unwrap_or_else(|| format!("<strong>{name}</strong>"));
        out.push_str("<tr>");
        if v.can_delete {
            let _ = write!(
                out,
                "<td class=\"sel\"><input type=\"checkbox\" class=\"select\" value=\"{name}\" \
                 aria-label=\"Select {name}\"></td>"
            );
        }
        let _ = writeln!(
            out,
            "<td class=\"name\"><a href=\"/repositories/{name}\">{path}</a></td>\
             <td class=\"num\">{}</td>{}<td>{}</td><td>{}</td></tr>",
            r.tag_count,
            size_cell(r.size),
            time_element(r.last_push),
            platforms(&r.platforms)
        );
    }
}

fn empty_state(v: &RepositoriesView<'_>) -> String {
    if let Some(q) = &v.params.q {
        return format!(
            "<div class=\"empty\"><p>No repository matches <strong>{}</strong>.</p>\
             <p><a href=\"/repositories\">Clear the filter</a></p></div>",
            esc(q)
        );
    }
    if v.params.after.is_some() {
        return "<div class=\"empty\"><p>No more repositories.</p>\
                <p><a href=\"/repositories\">Back to the first page</a></p></div>"
            .into();
    }
    format!(
        "<div class=\"empty\"><p><strong>No repositories yet.</strong></p>\
         <p>Push an image named with your namespace and it shows here at once:</p>\
         <pre><code>docker push {}/{}/alpine:latest</code></pre></div>",
        esc(v.host),
        esc(v.namespace)
    )
}

/// `<main>` of the Repositories page.
pub fn repositories_main(v: &RepositoriesView<'_>) -> String {
    let mut out = String::with_capacity(8192 + v.list.repositories.len() * 400);
    let _ = write!(
        out,
        "<div id=\"page\" data-kind=\"repositories\"></div>\n\
         <div class=\"page-head\"><h1>Repositories</h1></div>\n\
         <div class=\"toolbar\">\n\
         <form class=\"filter\" method=\"get\" action=\"/repositories\" role=\"search\">\
         <input type=\"search\" name=\"q\" id=\"filter\" value=\"{}\" placeholder=\"Filter by name\" \
         autocomplete=\"off\" aria-label=\"Filter repositories by name\" maxlength=\"256\">\
         <button type=\"submit\">Filter</button></form>\n\
         <span id=\"selection-count\" class=\"muted\"></span>\n{}\n</div>\n",
        esc(v.params.q.as_deref().unwrap_or("")),
        actions_menu(v.can_delete, "repositories")
    );
    out.push_str("<div id=\"listing\">\n");
    if v.list.repositories.is_empty() {
        out.push_str(&empty_state(v));
    } else {
        out.push_str("<table class=\"grid\" id=\"repositories\">\n<thead><tr>");
        if v.can_delete {
            out.push_str(
                "<th class=\"sel\"><input type=\"checkbox\" id=\"select-all\" \
                 aria-label=\"Select all on this page\"></th>",
            );
        }
        out.push_str(
            "<th>Name</th><th class=\"num\">Tags</th><th class=\"num\">Size</th>\
             <th>Last push</th><th>Platforms</th></tr></thead>\n<tbody>\n",
        );
        repository_rows(&mut out, v);
        out.push_str("</tbody>\n</table>\n");
    }
    let shown = v.list.repositories.len() as u64;
    let q = v.params.q.as_deref();
    let _ = write!(
        out,
        "<nav class=\"pager\" aria-label=\"Pages\"><span id=\"showing\">"
    );
    if shown > 0 {
        let _ = write!(
            out,
            "Showing {}–{} of {}",
            thousands(v.start),
            thousands(v.start + shown - 1),
            thousands(v.list.total)
        );
    } else {
        let _ = write!(out, "{} in all", thousands(v.list.total));
    }
    out.push_str("</span>");
    if v.params.after.is_some() {
        let _ = write!(
            out,
            " <a class=\"button\" id=\"first-page\" href=\"{}\">« First</a>",
            listing_link(q, None, 1)
        );
    }
    if let Some(next) = &v.list.next {
        let _ = write!(
            out,
            " <a class=\"button\" id=\"next-page\" href=\"{}\">Next ›</a>",
            listing_link(q, Some(next), v.start + shown)
        );
    }
    out.push_str("</nav>\n</div>\n");
    namespace_panel(&mut out, v.host, v.namespace);
    docker_login_panel(&mut out);
    out.push_str(DELETE_DIALOG);
    out
}

fn namespace_panel(out: &mut String, host: &str, namespace: &str) {
    let (host, ns) = (esc(host), esc(namespace));
    let _ = write!(
        out,
        "\n<section class=\"panel\" id=\"namespace\">\n<h2>Container namespace</h2>\n\
         <p>Your account's namespace is <code id=\"namespace-name\">{ns}</code>. \
         Name images with it as a prefix to push them here:</p>\n\
         <pre><code>docker tag alpine:latest {host}/{ns}/alpine:latest\n\
         docker push {host}/{ns}/alpine:latest</code></pre>\n</section>\n"
    );
}

fn docker_login_panel(out: &mut String) {
    out.push_str(
        "<section class=\"panel\" id=\"docker-login\">\n<h2>Docker Login</h2>\n\
         <p>Authenticate your docker client (or podman, skopeo, crane) with this registry. \
         The command holds a new credential that lasts about 24 hours; it is shown only once.</p>\n\
         <button type=\"button\" class=\"primary\" id=\"mint-login\">Get docker login command</button>\n\
         <div id=\"login-result\" class=\"copyable\" hidden><pre><code id=\"login-command\"></code></pre>\
         <button type=\"button\" class=\"copy\" id=\"copy-login\" data-copy-target=\"login-command\">Copy</button></div>\n\
         <p class=\"error\" id=\"login-error\" role=\"alert\" hidden></p>\n</section>\n",
    );
}

/// What kind of manifest a tag points at, in words.
fn kind_of(t: &TagDetail) -> String {
    // An image's artifact type is its config's media type (as referrers
    // report it): only other types make it an artifact.
    if let Some(a) = &t.artifact_type
        && !registry::manifest::IMAGE_CONFIGS.contains(&a.as_str())
    {
        return format!("artifact {a}");
    }
    match t.media_type.as_str() {
        "application/vnd.oci.image.manifest.v1+json" => "OCI image".into(),
        "application/vnd.oci.image.index.v1+json" => "OCI index".into(),
        "application/vnd.docker.distribution.manifest.v2+json" => "Docker image".into(),
        "application/vnd.docker.distribution.manifest.list.v2+json" => {
            "Docker manifest list".into()
        }
        other => other.to_owned(),
    }
}

/// A pull URI with its copy button.
fn pull_line(label: &str, uri: &str, class: &str) -> String {
    let uri = esc(uri);
    format!(
        "<div class=\"pull\"><span class=\"muted\">{label}</span> <code class=\"{class}\">{uri}</code>\
         <button type=\"button\" class=\"copy\" data-copy=\"{uri}\" title=\"Copy\">Copy</button></div>"
    )
}

/// `<main>` of a repository's page.
pub fn repository_main(v: &RepositoryView<'_>) -> String {
    let name = esc(v.repo.as_str());
    let path = v
        .repo
        .as_str()
        .strip_prefix(v.namespace)
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or(v.repo.as_str());
    let mut out = String::with_capacity(4096 + v.tags.len() * 1200);
    let _ = write!(
        out,
        "<div id=\"page\" data-kind=\"tags\" data-repository=\"{name}\"></div>\n\
         <nav class=\"crumbs\"><a href=\"/repositories\">Repositories</a> / <span>{}</span></nav>\n\
         <div class=\"page-head\"><h1 id=\"repository-name\">{name}</h1>\
         <span class=\"muted\">{} tag{}</span></div>\n\
         <div class=\"toolbar\">{}<span id=\"selection-count\" class=\"muted\"></span>\n{}\n</div>\n",
        esc(path),
        v.tags.len(),
        if v.tags.len() == 1 { "" } else { "s" },
        pull_line("Pull", &format!("{}/{}", v.host, v.repo), "pull-base"),
        actions_menu(v.can_delete, "tags")
    );
    if v.tags.is_empty() {
        out.push_str(
            "<div class=\"empty\"><p><strong>This repository has no tags.</strong></p>\
             <p>Its manifests are only reachable by digest, or it is being emptied.</p></div>\n",
        );
    } else {
        out.push_str("<table class=\"grid\" id=\"tags\">\n<thead><tr>");
        if v.can_delete {
            out.push_str(
                "<th class=\"sel\"><input type=\"checkbox\" id=\"select-all\" \
                 aria-label=\"Select all tags\"></th>",
            );
        }
        out.push_str(
            "<th>Tag</th><th>Digest</th><th class=\"num\">Size</th><th>Platforms</th>\
             <th>Pushed</th><th>Pull</th></tr></thead>\n<tbody>\n",
        );
        for t in v.tags {
            tag_row(&mut out, v, t);
        }
        out.push_str("</tbody>\n</table>\n");
    }
    out.push_str(DELETE_DIALOG);
    out
}

fn tag_row(out: &mut String, v: &RepositoryView<'_>, t: &TagDetail) {
    let tag = esc(&t.tag);
    let digest = t.digest.as_str();
    let short = digest
        .split_once(':')
        .map(|(alg, hex)| format!("{alg}:{}", &hex[..hex.len().min(12)]))
        .unwrap_or_else(|| digest.to_owned());
    let _ = write!(out, "<tr data-tag=\"{tag}\">");
    if v.can_delete {
        let _ = write!(
            out,
            "<td class=\"sel\"><input type=\"checkbox\" class=\"select\" value=\"{tag}\" \
             aria-label=\"Select tag {tag}\"></td>"
        );
    }
    let _ = writeln!(
        out,
        "<td class=\"tag\"><strong>{tag}</strong><div class=\"muted small\">{}</div></td>\
         <td class=\"digest\"><code title=\"{}\" data-digest=\"{}\">{}</code>\
         <button type=\"button\" class=\"copy\" data-copy=\"{}\" title=\"Copy digest\">Copy</button></td>\
         {}<td>{}</td><td>{}</td><td class=\"pulls\">{}{}</td></tr>",
        esc(&kind_of(t)),
        esc(digest),
        esc(digest),
        esc(&short),
        esc(digest),
        size_cell(t.size),
        platforms(&t.platforms),
        time_element(t.pushed_at),
        pull_line(
            "by tag",
            &format!("{}/{}:{}", v.host, v.repo, t.tag),
            "pull-tag"
        ),
        pull_line(
            "by digest",
            &format!("{}/{}@{}", v.host, v.repo, digest),
            "pull-digest"
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn links_keep_the_filter_escaped() {
        assert_eq!(listing_link(None, None, 1), "/repositories");
        assert_eq!(
            listing_link(Some("a b&c"), Some("ns/x"), 51),
            "/repositories?q=a+b%26c&amp;after=ns%2Fx&amp;start=51"
        );
    }
}
