//! The bodies of the Nodes and node pages: the node table, one node's
//! status, containers, images, drift, recent commands and the Pull form.
//! Everything a node or its agent reports (names, hostnames, images,
//! errors) is escaped on its way in; `assets/portal.js` drives the Pull
//! form through the JSON API.

use std::fmt::Write as _;

use control::CommandRecord;

use crate::html::{esc, human_size, time_element};
use crate::nodes::NodeView;

fn dash() -> &'static str {
    "<span class=\"muted\">—</span>"
}

fn text_or_dash(s: Option<&str>) -> String {
    match s {
        Some(s) if !s.is_empty() => esc(s),
        _ => dash().into(),
    }
}

fn state_badge(v: &NodeView) -> String {
    let mut out = if v.online {
        "<span class=\"badge online\">online</span>".to_owned()
    } else {
        "<span class=\"badge offline\">offline</span>".to_owned()
    };
    if v.revoked() {
        out.push_str("<span class=\"badge revoked\">revoked</span>");
    }
    out
}

fn last_seen(v: &NodeView) -> String {
    match &v.status {
        Some(s) => time_element(s.last_seen),
        None => "<span class=\"muted\">never connected</span>".into(),
    }
}

/// `<main>` of the Nodes page.
pub fn nodes_main(nodes: &[NodeView]) -> String {
    let mut out = String::with_capacity(2048 + nodes.len() * 600);
    out.push_str(
        "<div id=\"page\" data-kind=\"nodes\"></div>\n\
         <div class=\"page-head\"><h1>Nodes</h1></div>\n",
    );
    if nodes.is_empty() {
        out.push_str(
            "<div class=\"empty\" id=\"nodes-empty\"><p><strong>No nodes yet:</strong> enroll one with \
             <code>berth-server admin node enroll</code>.</p>\
             <p>An enrolled node's agent connects to this server and shows here with its \
             containers and images.</p></div>\n",
        );
        return out;
    }
    out.push_str(
        "<table class=\"grid\" id=\"nodes\">\n<thead><tr><th>Name</th><th>State</th>\
         <th>Agent</th><th>Platform</th><th>Hostname</th><th>Last seen</th>\
         <th class=\"num\">Containers</th><th class=\"num\">Images</th>\
         <th class=\"num\">Drift</th></tr></thead>\n<tbody>\n",
    );
    for v in nodes {
        let s = v.status.as_ref();
        let report = v.report();
        let _ = writeln!(
            out,
            "<tr data-node=\"{id}\"><td class=\"name\"><a href=\"/nodes/{id}\"><strong>{name}</strong></a></td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            state_badge(v),
            text_or_dash(s.map(|s| s.agent_version.as_str())),
            text_or_dash(s.map(|s| s.platform.as_str())),
            text_or_dash(s.map(|s| s.hostname.as_str())),
            last_seen(v),
            report.map_or(0, |r| r.containers.len()),
            report.map_or(0, |r| r.images.len()),
            report.map_or(0, |r| r.drift.len()),
            id = esc(&v.node.id),
            name = esc(&v.node.name),
        );
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

pub struct NodeViewPage<'a> {
    pub node: &'a NodeView,
    pub commands: &'a [CommandRecord],
    /// The caller may send commands (developer, admin).
    pub can_operate: bool,
}

fn status_panel(out: &mut String, v: &NodeView) {
    let s = v.status.as_ref();
    let _ = write!(
        out,
        "<section class=\"panel\" id=\"status\">\n<h2>Status</h2>\n<dl class=\"facts\">\
         <dt>State</dt><dd>{}</dd><dt>Agent</dt><dd>{}</dd><dt>Platform</dt><dd>{}</dd>\
         <dt>Hostname</dt><dd id=\"node-hostname\">{}</dd><dt>Last seen</dt><dd>{}</dd>\
         <dt>Account</dt><dd>{}</dd><dt>Node id</dt><dd><code>{}</code></dd></dl>\n",
        state_badge(v),
        text_or_dash(s.map(|s| s.agent_version.as_str())),
        text_or_dash(s.map(|s| s.platform.as_str())),
        text_or_dash(s.map(|s| s.hostname.as_str())),
        last_seen(v),
        esc(&v.account),
        esc(&v.node.id),
    );
    if let Some(r) = v.report()
        && !r.desired_error.is_empty()
    {
        let _ = writeln!(
            out,
            "<p class=\"error\" id=\"desired-error\">The desired state could not be applied: {}</p>",
            esc(&r.desired_error)
        );
    }
    out.push_str("</section>\n");
}

fn containers_panel(out: &mut String, v: &NodeView) {
    out.push_str("<section class=\"panel\" id=\"containers\">\n<h2>Containers</h2>\n");
    let containers = v.report().map(|r| r.containers.as_slice()).unwrap_or(&[]);
    if containers.is_empty() {
        out.push_str("<p class=\"muted\">No containers reported.</p>\n</section>\n");
        return;
    }
    out.push_str(
        "<table class=\"grid\">\n<thead><tr><th>Name</th><th>Image</th><th>State</th>\
         <th>Exec type</th><th class=\"num\">Restarts</th><th>Desired</th></tr></thead>\n<tbody>\n",
    );
    for c in containers {
        let _ = writeln!(
            out,
            "<tr><td><strong>{}</strong></td><td><code>{}</code></td><td><span class=\"badge\">{}</span></td>\
             <td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&c.name),
            esc(&c.image),
            esc(&c.state),
            text_or_dash(Some(&c.exec_type)),
            c.restarts,
            if c.desired { "yes" } else { "no" },
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn images_panel(out: &mut String, v: &NodeView) {
    out.push_str("<section class=\"panel\" id=\"images\">\n<h2>Images</h2>\n");
    let images = v.report().map(|r| r.images.as_slice()).unwrap_or(&[]);
    if images.is_empty() {
        out.push_str("<p class=\"muted\">No images reported.</p>\n</section>\n");
        return;
    }
    out.push_str(
        "<table class=\"grid\">\n<thead><tr><th>Name</th><th>Digest</th>\
         <th class=\"num\">Size</th></tr></thead>\n<tbody>\n",
    );
    for i in images {
        let _ = writeln!(
            out,
            "<tr><td><strong>{}</strong></td><td class=\"digest\"><code>{}</code></td>\
             <td class=\"num\" title=\"{} bytes\">{}</td></tr>",
            esc(&i.name),
            esc(&i.digest),
            i.size,
            human_size(i.size),
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn drift_panel(out: &mut String, v: &NodeView) {
    out.push_str("<section class=\"panel\" id=\"drift\">\n<h2>Drift</h2>\n");
    let drift = v.report().map(|r| r.drift.as_slice()).unwrap_or(&[]);
    if drift.is_empty() {
        out.push_str(
            "<p class=\"muted\">None: what runs matches the desired state.</p>\n</section>\n",
        );
        return;
    }
    out.push_str(
        "<table class=\"grid\">\n<thead><tr><th>Container</th><th>Kind</th><th>Detail</th>\
         </tr></thead>\n<tbody>\n",
    );
    for d in drift {
        let _ = writeln!(
            out,
            "<tr><td><strong>{}</strong></td><td><span class=\"badge\">{}</span></td><td>{}</td></tr>",
            esc(&d.name),
            esc(&d.kind),
            text_or_dash(Some(&d.detail)),
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn commands_panel(out: &mut String, commands: &[CommandRecord]) {
    out.push_str("<section class=\"panel\" id=\"commands\">\n<h2>Recent commands</h2>\n");
    if commands.is_empty() {
        out.push_str("<p class=\"muted\">No commands yet.</p>\n</section>\n");
        return;
    }
    out.push_str(
        "<table class=\"grid\">\n<thead><tr><th>Kind</th><th>State</th><th>Actor</th>\
         <th>Time</th><th>Error</th></tr></thead>\n<tbody>\n",
    );
    for c in commands {
        let error = c
            .result
            .as_ref()
            .map(|r| r.error.as_str())
            .filter(|e| !e.is_empty());
        let _ = writeln!(
            out,
            "<tr data-command=\"{}\"><td>{}</td><td><span class=\"badge state-{}\">{}</span></td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.id),
            esc(&c.kind),
            c.state.as_str(),
            c.state.as_str(),
            esc(&c.actor),
            time_element(c.created_at),
            error.map_or_else(
                || dash().to_owned(),
                |e| format!("<span class=\"error-text\">{}</span>", esc(e))
            ),
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn pull_panel(out: &mut String, v: &NodeView) {
    out.push_str("<section class=\"panel\" id=\"pull\">\n<h2>Pull an image</h2>\n");
    if v.revoked() {
        out.push_str(
            "<p class=\"muted\">This node is revoked: it takes no commands.</p>\n</section>\n",
        );
        return;
    }
    out.push_str(
        "<form id=\"pull-form\" class=\"inline-form\">\
         <input type=\"text\" name=\"image\" id=\"pull-image\" required maxlength=\"512\" \
         autocomplete=\"off\" spellcheck=\"false\" placeholder=\"nginx:latest\" \
         aria-label=\"Image to pull\">\
         <button type=\"submit\" class=\"primary\" id=\"pull-button\">Pull</button></form>\n\
         <div id=\"pull-status\" hidden><p><span class=\"muted\">Command</span> \
         <code id=\"pull-command\"></code> <span class=\"badge\" id=\"pull-state\"></span></p>\
         <p id=\"pull-message\" class=\"muted\"></p><div id=\"pull-blobs\" class=\"blobs\"></div></div>\n\
         <p class=\"error\" id=\"pull-error\" role=\"alert\" hidden></p>\n</section>\n",
    );
}

/// `<main>` of one node's page.
pub fn node_main(p: &NodeViewPage<'_>) -> String {
    let v = p.node;
    let name = esc(&v.node.name);
    let mut out = String::with_capacity(8192);
    let _ = write!(
        out,
        "<div id=\"page\" data-kind=\"node\" data-node=\"{}\"></div>\n\
         <nav class=\"crumbs\"><a href=\"/nodes\">Nodes</a> / <span>{name}</span></nav>\n\
         <div class=\"page-head\"><h1 id=\"node-name\">{name}</h1>{}</div>\n",
        esc(&v.node.id),
        state_badge(v),
    );
    status_panel(&mut out, v);
    if p.can_operate {
        pull_panel(&mut out, v);
    }
    containers_panel(&mut out, v);
    images_panel(&mut out, v);
    drift_panel(&mut out, v);
    commands_panel(&mut out, p.commands);
    out
}
