//! For the offline manifest tests (`node-installer/tests/manifests.rs`,
//! `app/tests/manifests.rs`): running `kubectl`/`kubernetes-validate`, and
//! reading their YAML with a few line-based helpers instead of a YAML crate.
//! The helpers understand just enough (indentation, `key:` blocks and `- `
//! list items) for the regular output of `kubectl kustomize` and for
//! hand-written manifests in the same style.
//!
//! Like assertions, these functions panic with what went wrong: they are
//! meant for tests.

use std::io::ErrorKind;
use std::path::Path;
use std::process::{Command, Output};

const INSTALL_HINT: &str = "run scripts/install-prerequisites.sh to install it";

/// Runs `program` to completion; a missing program panics with the way to
/// install it (the tests fail, they do not skip).
pub fn run_tool(program: &str, args: &[String]) -> Output {
    match Command::new(program).args(args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("`{program}` is not installed (not found on PATH): {INSTALL_HINT}")
        }
        Err(e) => panic!("cannot run `{program}`: {e}"),
    }
}

/// An `Output` as text, for failure messages.
pub fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `kubectl kustomize dir`.
pub fn kustomize(dir: &Path) -> String {
    let output = run_tool("kubectl", &["kustomize".into(), dir.display().to_string()]);
    assert!(
        output.status.success(),
        "`kubectl kustomize {}` failed; fix the kustomization:\n{}",
        dir.display(),
        describe(&output)
    );
    String::from_utf8(output.stdout).expect("kubectl kustomize prints UTF-8")
}

/// The lines of `text` that carry data: no blank lines, no full-line comments.
pub fn significant_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The documents of a multi-document YAML stream.
pub fn documents(stream: &str) -> Vec<Vec<String>> {
    stream.split("\n---\n").map(significant_lines).filter(|doc| !doc.is_empty()).collect()
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The value of `key` at the top level of `block` (the least indented lines).
pub fn field(block: &[String], key: &str) -> Option<String> {
    let top = block.iter().map(|l| indent(l)).min()?;
    block
        .iter()
        .filter(|l| indent(l) == top)
        .find_map(|l| Some(unquote(l.trim().strip_prefix(key)?.strip_prefix(':')?.trim())))
}

/// The lines nested under the top-level `key:` line of `block`, whether that
/// key starts a list item (`- key:`) or not. A list written at the key's own
/// indentation (`key:` then `- item`, kubectl's style) belongs to the key too.
pub fn child_opt(block: &[String], key: &str) -> Option<Vec<String>> {
    let header = format!("{key}:");
    let top = block.iter().map(|l| indent(l)).min().unwrap_or(0);
    let (start, column) = block.iter().enumerate().filter(|(_, l)| indent(l) == top).find_map(|(i, l)| {
        let text = l.trim_start();
        let text = text.strip_prefix("- ").map_or(text, str::trim_start);
        (text == header).then(|| (i, l.len() - text.len()))
    })?;
    let nested = block[start + 1..]
        .iter()
        .take_while(|l| indent(l) > column || (indent(l) == column && l.trim_start().starts_with("- ")))
        .cloned()
        .collect();
    Some(nested)
}

/// Like [`child_opt`], panicking when there is no such block.
pub fn child(block: &[String], key: &str) -> Vec<String> {
    child_opt(block, key).unwrap_or_else(|| panic!("no `{key}:` block in:\n{}", block.join("\n")))
}

/// The items of a block sequence, each with its leading `- ` blanked out so
/// that the item's keys share one indentation.
pub fn items(block: &[String]) -> Vec<Vec<String>> {
    let Some(column) = block.iter().filter(|l| l.trim_start().starts_with("- ")).map(|l| indent(l)).min()
    else {
        return Vec::new();
    };
    let mut items: Vec<Vec<String>> = Vec::new();
    for line in block {
        if indent(line) == column && line.trim_start().starts_with("- ") {
            items.push(vec![line.replacen("- ", "  ", 1)]);
        } else if let Some(item) = items.last_mut() {
            item.push(line.clone());
        }
    }
    items
}

/// The values of a block sequence of scalars, e.g. `args`, `verbs` or `scopes`.
pub fn scalars(block: &[String]) -> Vec<String> {
    block.iter().filter_map(|l| l.trim().strip_prefix("- ")).map(|v| unquote(v.trim())).collect()
}

pub fn unquote(value: &str) -> String {
    value.trim_matches(|c| c == '"' || c == '\'').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "kind: Pod\nspec:\n  # a comment\n  containers:\n  - name: a\n    args:\n    - \"x\"\n  - name: b\nother: 1\n";

    #[test]
    fn reads_fields_blocks_and_list_items() {
        let doc = significant_lines(DOC);
        assert_eq!(field(&doc, "kind").as_deref(), Some("Pod"));
        let containers = child(&child(&doc, "spec"), "containers");
        let items = items(&containers);
        assert_eq!(items.len(), 2);
        assert_eq!(field(&items[1], "name").as_deref(), Some("b"));
        assert_eq!(scalars(&child(&items[0], "args")), ["x"]);
        assert!(child_opt(&doc, "missing").is_none());
        assert_eq!(documents("a: 1\n---\n\n---\nb: 2\n").len(), 2);
    }
}
