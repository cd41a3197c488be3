//! Editing containerd's config: add or remove the runtime's table next to
//! `runc`, leaving every other byte as it was (comments, spacing, order).
//!
//! Decisions are made on the parsed TOML (exact keys, `toml_edit`); the
//! addition is one block appended between a [`BEGIN`] and an [`END`] line,
//! so `uninstall` takes out exactly the bytes `install` put in, and every
//! result is parsed again before it is returned.
//!
//! Works on config `version = 2` (containerd 1.x, plugin
//! `io.containerd.grpc.v1.cri`), `3` and `4` (containerd 2.x, plugin
//! `io.containerd.cri.v1.runtime`), the mixed shape (a `version = 2` header
//! over v3 tables), and Go templates (k3s/RKE2 `config.toml.tmpl`), whose
//! template lines are set aside while the TOML around them is read.

use anyhow::{Context, Result, bail};
use toml_edit::{DocumentMut, Item, Table, value};

/// The runtime to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// Handler name, as in a RuntimeClass's `handler` (`wasmtime-custom`).
    pub name: String,
    /// `io.containerd.wasmtime-custom.v1`.
    pub runtime_type: String,
    /// Absolute path of the shim binary on the node.
    pub runtime_path: String,
}

const V2_PLUGIN: &str = "io.containerd.grpc.v1.cri";
const V3_PLUGIN: &str = "io.containerd.cri.v1.runtime";

/// First line of the block the installer appends.
pub const BEGIN: &str =
    "# BEGIN wasmtime-custom-node-installer: added by `install`, removed by `uninstall`; do not edit";
/// Last line of the installer's block.
pub const END: &str = "# END wasmtime-custom-node-installer";

/// What an edit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub text: String,
    pub changed: bool,
    /// Each runtimes table touched, as a dotted path, for the log.
    pub places: Vec<String>,
}

/// What an edit needs besides the file's text.
#[derive(Debug, Clone, Default)]
pub struct EditInputs {
    /// The config version of what a template's base renders to (a template
    /// may not say it itself).
    pub base_version: Option<i64>,
    /// runc's table as containerd resolves it from this file (from
    /// `config dump`). containerd 1.x drops its built-in runc once the file
    /// lists any runtime, so a version 2 file without runc gets it written
    /// out next to ours.
    pub runc_defaults: Option<toml::Table>,
    /// The file is a template whose base already lists runc (k3s, RKE2):
    /// runc must not be written again.
    pub base_lists_runc: bool,
}

/// Adds the runtime to `text`, or brings an existing entry up to date. The
/// installer's previous block, if any, is replaced; everything else stays
/// byte for byte. A file that does not parse is an error.
pub fn install(text: &str, runtime: &Runtime, inputs: &EditInputs) -> Result<Edit> {
    if runtime.name == "runc" {
        bail!("the runtime name `runc` is containerd's default runtime; choose another name");
    }
    let without_ours = remove_blocks(text)?;
    let (mut doc, template_lines) = parse(&without_ours)?;
    let version = config_version(&doc, inputs.base_version)?;
    let mut places = runc_places(&doc);
    let mut block = String::new();
    if places.is_empty() {
        // No runc written out: the runtime goes where this config version
        // keeps runtimes, with runc made explicit where containerd 1.x would
        // otherwise lose it.
        let place = default_place(version);
        if version == 2 && !inputs.base_lists_runc {
            let runc = inputs.runc_defaults.as_ref().context(
                "this version 2 config lists no runc; its resolved runc (from `containerd config dump`) \
                 is needed to keep runc when another runtime is added",
            )?;
            block.push_str(&render_table(&child(&place, "runc"), runc));
        }
        places.push(place);
    }
    let mut edited_in_place = false;
    for place in &places {
        let systemd_cgroup = lookup(&doc, place)
            .and_then(|runtimes| runtimes.get("runc"))
            .and_then(|runc| runc.get("options"))
            .and_then(|options| options.get("SystemdCgroup"))
            .and_then(Item::as_bool)
            .or_else(|| inputs.runc_defaults.as_ref()?.get("options")?.get("SystemdCgroup")?.as_bool());
        if let Some(existing) = lookup(&doc, place).and_then(|runtimes| runtimes.get(&runtime.name)) {
            // Written by hand (the installer's own block was taken out
            // above): update it where it is, but only if it is this shim;
            // another runtime of that name is not ours to take over.
            let existing_type = existing.get("runtime_type").and_then(Item::as_str).unwrap_or("");
            if existing_type != runtime.runtime_type {
                bail!(
                    "a runtime named {} is already registered with runtime_type {existing_type:?}; \
                     choose another --runtime-name",
                    runtime.name
                );
            }
            edited_in_place |= update_in_place(table_at(&mut doc, place)?, runtime, systemd_cgroup)?;
        } else {
            block.push_str(&render_runtime(place, runtime, systemd_cgroup));
        }
    }
    let mut new_text =
        if edited_in_place { print(&doc, &template_lines, &without_ours)? } else { without_ours };
    if !block.is_empty() {
        new_text = format!("{new_text}\n{BEGIN}\n{block}{END}\n");
    }
    // The result must parse and say what was meant before anyone writes it.
    if registered_at(&new_text, &runtime.name)?.len() < places.len() {
        bail!("internal error: the edited config does not register {} in every runtimes table", runtime.name);
    }
    let places = places.iter().map(|p| p.join(".")).collect();
    Ok(Edit { changed: new_text != text, text: new_text, places })
}

/// Removes the runtime: the installer's block byte for byte, and an entry
/// of that name written by hand if it is this shim (`runtime_type`).
pub fn uninstall(text: &str, runtime: &Runtime) -> Result<Edit> {
    let name = runtime.name.as_str();
    let had_block = text.contains(&format!("\n{BEGIN}\n"));
    let without_ours = remove_blocks(text)?;
    let (mut doc, template_lines) = parse(&without_ours)?;
    let mut places = Vec::new();
    for place in runtimes_tables(&doc) {
        let runtimes = table_at(&mut doc, &place)?;
        let ours = runtimes
            .get(name)
            .and_then(|entry| entry.get("runtime_type"))
            .and_then(Item::as_str)
            .is_some_and(|t| t == runtime.runtime_type);
        if ours {
            runtimes.remove(name);
            places.push(place.join("."));
        }
    }
    let new_text =
        if places.is_empty() { without_ours } else { print(&doc, &template_lines, &without_ours)? };
    if !places.is_empty() && !registered_at(&new_text, name)?.is_empty() {
        bail!("internal error: {name} is still registered after removing it");
    }
    if had_block {
        places.push("the installer's block".to_string());
    }
    Ok(Edit { changed: new_text != text, text: new_text, places })
}

/// Where the runtime is registered in `text` (empty if nowhere).
pub fn registered_at(text: &str, name: &str) -> Result<Vec<String>> {
    let (doc, _) = parse(text)?;
    Ok(runtimes_tables(&doc)
        .into_iter()
        .filter(|place| lookup(&doc, place).is_some_and(|t| t.contains_key(name)))
        .map(|place| place.join("."))
        .collect())
}

/// `text` without the installer's blocks (each from the newline before
/// [`BEGIN`] through the line [`END`]).
fn remove_blocks(text: &str) -> Result<String> {
    let begin = format!("\n{BEGIN}\n");
    let end = format!("\n{END}\n");
    let mut rest = text;
    let mut out = String::new();
    while let Some(start) = rest.find(&begin) {
        let length = rest[start + 1..].find(&end).with_context(|| {
            format!("the installer's block has no closing `{END}` line; fix the file by hand")
        })?;
        out.push_str(&rest[..start]);
        rest = &rest[start + 1 + length + end.len()..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Placeholder for a Go template line while the rest is parsed as TOML.
const TEMPLATE_PLACEHOLDER: &str = "#wasmtime-custom-template-line ";

/// Parses `text` as TOML; lines holding a Go template action (`{{ ... }}`)
/// are swapped for comments first and remembered.
fn parse(text: &str) -> Result<(DocumentMut, Vec<String>)> {
    let mut template_lines = Vec::new();
    let toml: String = text
        .split_inclusive('\n')
        .map(|line| {
            if line.trim_start().starts_with("{{") {
                template_lines.push(line.to_string());
                format!("{TEMPLATE_PLACEHOLDER}{}\n", template_lines.len() - 1)
            } else {
                line.to_string()
            }
        })
        .collect();
    let doc: DocumentMut = toml.parse().context("the config is not valid TOML")?;
    Ok((doc, template_lines))
}

/// Prints an edited document. toml_edit keeps comments and spacing, but this
/// is only trusted when the unedited document printed back to `original`
/// byte for byte (it does not always, e.g. without a final newline).
fn print(edited: &DocumentMut, template_lines: &[String], original: &str) -> Result<String> {
    let (unedited, _) = parse(original)?;
    if restore_template_lines(&unedited.to_string(), template_lines) != original {
        bail!("the TOML editor would not reproduce this file byte for byte; change the entry by hand");
    }
    Ok(restore_template_lines(&edited.to_string(), template_lines))
}

fn restore_template_lines(toml: &str, template_lines: &[String]) -> String {
    toml.split_inclusive('\n')
        .map(|line| {
            line.strip_prefix(TEMPLATE_PLACEHOLDER)
                .and_then(|n| n.trim_end().parse::<usize>().ok())
                .and_then(|n| template_lines.get(n))
                .map_or_else(|| line.to_string(), Clone::clone)
        })
        .collect()
}

/// The config's `version` (or `fallback` when the file has none). Version 1
/// (no `version` key) predates the plugin layout this installer edits.
pub fn config_version(doc: &DocumentMut, fallback: Option<i64>) -> Result<i64> {
    let version = match doc.get("version") {
        Some(item) => item.as_integer().context("the config's `version` is not a number")?,
        None => fallback.context(
            "the config has no `version` key, i.e. containerd's version 1 format; \
             convert it with `containerd config migrate` first",
        )?,
    };
    if !(2..=4).contains(&version) {
        bail!("config version {version} is not supported (2, 3 and 4 are)");
    }
    Ok(version)
}

/// Whether a config text defines runc in a CRI runtimes table.
pub fn lists_runc(text: &str) -> Result<bool> {
    let (doc, _) = parse(text)?;
    Ok(!runc_places(&doc).is_empty())
}

/// The `version` of a config text (template lines set aside), if it has one.
pub fn version_of(text: &str) -> Result<Option<i64>> {
    let (doc, _) = parse(text)?;
    Ok(doc.get("version").and_then(Item::as_integer))
}

fn default_place(version: i64) -> Vec<String> {
    let plugin = if version == 2 { V2_PLUGIN } else { V3_PLUGIN };
    ["plugins", plugin, "containerd", "runtimes"].map(String::from).to_vec()
}

fn child(place: &[String], key: &str) -> Vec<String> {
    [place.to_vec(), vec![key.to_string()]].concat()
}

/// Every CRI runtimes table in the file: `plugins.<cri plugin>.containerd.runtimes`.
fn runtimes_tables(doc: &DocumentMut) -> Vec<Vec<String>> {
    [V2_PLUGIN, V3_PLUGIN]
        .into_iter()
        .map(|plugin| ["plugins", plugin, "containerd", "runtimes"].map(String::from).to_vec())
        .filter(|place| lookup(doc, place).is_some())
        .collect()
}

/// The runtimes tables that define `runc`.
fn runc_places(doc: &DocumentMut) -> Vec<Vec<String>> {
    runtimes_tables(doc)
        .into_iter()
        .filter(|place| lookup(doc, place).and_then(|t| t.get("runc")).is_some_and(Item::is_table_like))
        .collect()
}

fn lookup<'a>(doc: &'a DocumentMut, place: &[String]) -> Option<&'a dyn toml_edit::TableLike> {
    let mut item = doc.as_item();
    for key in place {
        item = item.get(key)?;
    }
    item.as_table_like()
}

fn table_at<'a>(doc: &'a mut DocumentMut, place: &[String]) -> Result<&'a mut Table> {
    let mut table = doc.as_table_mut();
    for key in place {
        table = table.get_mut(key).and_then(Item::as_table_mut).with_context(|| {
            format!("`{key}` in {} is not a table; edit the file by hand", place.join("."))
        })?;
    }
    Ok(table)
}

/// Brings a hand-written entry up to date; `true` if anything changed.
fn update_in_place(runtimes: &mut Table, runtime: &Runtime, systemd_cgroup: Option<bool>) -> Result<bool> {
    let existing = runtimes.get_mut(&runtime.name).and_then(Item::as_table_like_mut).with_context(|| {
        format!("`{}` exists in the runtimes table but is not a table; edit the file by hand", runtime.name)
    })?;
    let mut changed = set_if_different(existing, "runtime_type", &runtime.runtime_type);
    changed |= set_if_different(existing, "runtime_path", &runtime.runtime_path);
    if let Some(systemd_cgroup) = systemd_cgroup {
        let options = existing.entry("options").or_insert_with(|| Item::Table(Table::new()));
        let options = options.as_table_like_mut().context("the runtime's `options` is not a table")?;
        if options.get("SystemdCgroup").and_then(Item::as_bool) != Some(systemd_cgroup) {
            options.insert("SystemdCgroup", value(systemd_cgroup));
            changed = true;
        }
    }
    Ok(changed)
}

fn set_if_different(table: &mut dyn toml_edit::TableLike, key: &str, wanted: &str) -> bool {
    if table.get(key).and_then(Item::as_str) == Some(wanted) {
        return false;
    }
    table.insert(key, value(wanted));
    true
}

/// A TOML key as it may stand in a table header.
fn render_key(key: &str) -> String {
    if !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        key.to_string()
    } else {
        toml::Value::String(key.to_string()).to_string()
    }
}

fn render_runtime(place: &[String], runtime: &Runtime, systemd_cgroup: Option<bool>) -> String {
    let mut table = toml::Table::new();
    table.insert("runtime_type".into(), toml::Value::String(runtime.runtime_type.clone()));
    table.insert("runtime_path".into(), toml::Value::String(runtime.runtime_path.clone()));
    if let Some(systemd_cgroup) = systemd_cgroup {
        let mut options = toml::Table::new();
        options.insert("SystemdCgroup".into(), toml::Value::Boolean(systemd_cgroup));
        table.insert("options".into(), toml::Value::Table(options));
    }
    render_table(&child(place, &runtime.name), &table)
}

/// `table` as standard tables under full headers (never a parent's header,
/// which the file may define already).
fn render_table(path: &[String], table: &toml::Table) -> String {
    let header: Vec<String> = path.iter().map(|k| render_key(k)).collect();
    let mut out = format!("[{}]\n", header.join("."));
    for (key, value) in table.iter().filter(|(_, v)| !v.is_table()) {
        out.push_str(&format!("{} = {value}\n", render_key(key)));
    }
    for (key, value) in table {
        if let toml::Value::Table(sub) = value {
            out.push_str(&render_table(&child(path, key), sub));
        }
    }
    out
}

/// A line diff of `before` and `after` for `--dry-run`: the common head and
/// tail are left out, the middle is shown as removed and added lines.
pub fn diff(path: &str, before: &str, after: &str) -> String {
    let old: Vec<&str> = before.lines().collect();
    let new: Vec<&str> = after.lines().collect();
    let head = old.iter().zip(&new).take_while(|(a, b)| a == b).count();
    let tail = old[head..].iter().rev().zip(new[head..].iter().rev()).take_while(|(a, b)| a == b).count();
    let mut out = format!("--- {path}\n+++ {path} (after)\n@@ line {} @@\n", head + 1);
    for line in &old[head..old.len() - tail] {
        out.push_str(&format!("-{line}\n"));
    }
    for line in &new[head..new.len() - tail] {
        out.push_str(&format!("+{line}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> Runtime {
        Runtime {
            name: "wasmtime-custom".into(),
            runtime_type: "io.containerd.wasmtime-custom.v1".into(),
            runtime_path: "/usr/local/bin/containerd-shim-wasmtime-custom-v1".into(),
        }
    }

    fn install(text: &str) -> Result<Edit> {
        super::install(text, &runtime(), &EditInputs::default())
    }

    const V2: &str = "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n    SystemdCgroup = true\n";

    #[test]
    fn adds_a_sibling_of_runc_with_its_cgroup_driver() {
        let edit = install(V2).unwrap();
        assert!(edit.changed);
        assert_eq!(
            edit.text,
            format!(
                "{V2}\n{BEGIN}\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime-custom]\n\
                 runtime_path = \"/usr/local/bin/containerd-shim-wasmtime-custom-v1\"\n\
                 runtime_type = \"io.containerd.wasmtime-custom.v1\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime-custom.options]\n\
                 SystemdCgroup = true\n{END}\n"
            )
        );
        assert_eq!(edit.places, ["plugins.io.containerd.grpc.v1.cri.containerd.runtimes"]);
    }

    #[test]
    fn install_twice_is_install_once_and_uninstall_restores_the_bytes() {
        let once = install(V2).unwrap();
        let twice = install(&once.text).unwrap();
        assert!(!twice.changed);
        assert_eq!(twice.text, once.text);
        let removed = uninstall(&once.text, &runtime()).unwrap();
        assert!(removed.changed);
        assert_eq!(removed.text, V2);
        assert!(!uninstall(V2, &runtime()).unwrap().changed);
    }

    #[test]
    fn a_file_without_final_newline_comes_back_as_it_was() {
        let text = V2.trim_end();
        let once = install(text).unwrap();
        assert_eq!(uninstall(&once.text, &runtime()).unwrap().text, text);
    }

    #[test]
    fn a_changed_path_replaces_the_block() {
        let once = install(V2).unwrap();
        let moved = Runtime { runtime_path: "/opt/bin/shim".into(), ..runtime() };
        let edit = super::install(&once.text, &moved, &EditInputs::default()).unwrap();
        assert!(edit.changed);
        assert_eq!(
            edit.text,
            once.text.replace("/usr/local/bin/containerd-shim-wasmtime-custom-v1", "/opt/bin/shim")
        );
    }

    #[test]
    fn a_hand_written_entry_is_updated_in_place() {
        let text = format!(
            "{V2}[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime-custom]\n  runtime_type = \"io.containerd.wasmtime-custom.v1\"\n  runtime_path = \"/old\"\n"
        );
        let edit = install(&text).unwrap();
        assert!(edit.changed);
        assert!(!edit.text.contains(BEGIN));
        assert!(edit.text.contains("runtime_path = \"/usr/local/bin/containerd-shim-wasmtime-custom-v1\""));
        assert!(!install(&edit.text).unwrap().changed);
    }

    #[test]
    fn v3_without_runc_gets_the_runtime_where_v3_keeps_runtimes() {
        let edit = install("version = 3\n").unwrap();
        assert!(
            edit.text
                .contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.wasmtime-custom]")
        );
        assert_eq!(uninstall(&edit.text, &runtime()).unwrap().text, "version = 3\n");
    }

    #[test]
    fn v4_keeps_runtimes_where_v3_does() {
        // containerd 2.3's version 4 leaves the CRI runtime plugin as in v3.
        let text = "version = 4\n\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n  runtime_type = 'io.containerd.runc.v2'\n";
        let edit = install(text).unwrap();
        assert_eq!(edit.places, ["plugins.io.containerd.cri.v1.runtime.containerd.runtimes"]);
        assert_eq!(uninstall(&edit.text, &runtime()).unwrap().text, text);
        let bare = install("version = 4\n").unwrap();
        assert!(
            bare.text
                .contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.wasmtime-custom]")
        );
    }

    #[test]
    fn v2_without_runc_keeps_runc_explicitly() {
        assert!(format!("{:#}", install("version = 2\n").unwrap_err()).contains("config dump"));
        let runc: toml::Table = toml::from_str(
            "runtime_type = \"io.containerd.runc.v2\"\nsandbox_mode = \"podsandbox\"\n[options]\nSystemdCgroup = false\n",
        )
        .unwrap();
        let inputs = EditInputs { runc_defaults: Some(runc), ..EditInputs::default() };
        let edit = super::install("version = 2\n", &runtime(), &inputs).unwrap();
        assert!(edit.text.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\nruntime_type = \"io.containerd.runc.v2\"\nsandbox_mode = \"podsandbox\"\n"), "{}", edit.text);
        assert!(edit.text.contains("SystemdCgroup = false"));
        assert_eq!(uninstall(&edit.text, &runtime()).unwrap().text, "version = 2\n");
    }

    #[test]
    fn another_runtime_of_that_name_is_not_taken_over() {
        let text = format!(
            "{V2}[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime-custom]\n  runtime_type = \"io.containerd.spin.v2\"\n"
        );
        let err = format!("{:#}", install(&text).unwrap_err());
        assert!(err.contains("already registered with runtime_type \"io.containerd.spin.v2\""), "{err}");
        assert!(!uninstall(&text, &runtime()).unwrap().changed, "not ours: left alone");
        let runc = Runtime { name: "runc".into(), ..runtime() };
        assert!(super::install(V2, &runc, &EditInputs::default()).is_err());
    }

    #[test]
    fn a_similar_name_is_not_mistaken_for_ours() {
        let text = format!(
            "{V2}[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime-custom-old]\n  runtime_type = \"x\"\n"
        );
        let edit = install(&text).unwrap();
        assert!(edit.changed);
        assert_eq!(registered_at(&edit.text, "wasmtime-custom-old").unwrap().len(), 1);
        assert_eq!(uninstall(&edit.text, &runtime()).unwrap().text, text);
    }

    #[test]
    fn templates_keep_their_template_lines() {
        let template = "{{ template \"base\" . }}\n";
        // The version comes from what the base renders to, which the
        // template cannot show: the caller passes it.
        assert!(install(template).is_err());
        let inputs = EditInputs { base_version: Some(3), ..EditInputs::default() };
        let edit = super::install(template, &runtime(), &inputs).unwrap();
        assert!(edit.text.starts_with(template));
        assert!(
            edit.text
                .contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.wasmtime-custom]")
        );
        assert_eq!(uninstall(&edit.text, &runtime()).unwrap().text, template);
    }

    #[test]
    fn broken_or_old_configs_are_refused() {
        let err = install("[plugins\nversion = 2").unwrap_err();
        assert!(format!("{err:#}").contains("not valid TOML"), "{err:#}");
        let err = install("[plugins.cri]\n").unwrap_err();
        assert!(format!("{err:#}").contains("containerd config migrate"), "{err:#}");
        assert!(install("version = 9\n").is_err());
        let cut = format!("{V2}\n{BEGIN}\n[x]\n");
        assert!(format!("{:#}", install(&cut).unwrap_err()).contains("no closing"));
    }

    #[test]
    fn diff_shows_only_the_change() {
        let d = diff("c.toml", "a\nb\nc\n", "a\nb\nX\nc\n");
        assert_eq!(d, "--- c.toml\n+++ c.toml (after)\n@@ line 3 @@\n+X\n");
    }
}
