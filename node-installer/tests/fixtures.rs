//! The config editor on real-world configs, checked by the containerd
//! versions that read them (1.6.20 from Debian 12; 1.7.24 and 2.1.9
//! unpacked by scripts/install-prerequisites.sh): after install containerd
//! resolves the runtime and everything else exactly as before; install twice
//! is install once; uninstall gives the original bytes back.

use std::path::{Path, PathBuf};

use node_installer::config::{self, EditInputs, Runtime};
use node_installer::dump;
use node_installer::node_root::NodeRoot;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("node-installer is in the workspace").to_path_buf()
}

/// The containerd binary of `version`, where `scripts/containerd.sh` keeps
/// it; fails (never skips) when it cannot be had.
fn containerd(version: &str) -> PathBuf {
    let output = std::process::Command::new(workspace().join("scripts/containerd.sh"))
        .args(["bin", version])
        .output()
        .expect("run scripts/containerd.sh bin");
    assert!(output.status.success(), "no containerd {version}: {}", String::from_utf8_lossy(&output.stderr));
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()).join("containerd");
    assert!(path.exists(), "{} is missing: run scripts/install-prerequisites.sh", path.display());
    path
}

fn fixture(name: &str) -> String {
    let path = workspace().join("node-installer/tests/fixtures").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn runtime() -> Runtime {
    Runtime {
        name: "wasmtime-custom".into(),
        runtime_type: "io.containerd.wasmtime-custom.v1".into(),
        runtime_path: "/usr/local/bin/containerd-shim-wasmtime-custom-v1".into(),
    }
}

/// Installs into `text` and checks the result with containerd `version`.
fn install_checked(text: &str, version: &str, base_version: Option<i64>) -> config::Edit {
    let node_root = NodeRoot::new("/");
    let scratch = tempfile::tempdir().unwrap();
    let bin = containerd(version);
    let before =
        dump::dump_text(&node_root, &bin, scratch.path(), text).expect("containerd reads the original");
    let inputs = EditInputs { base_version, runc_defaults: dump::runc(&before), base_lists_runc: false };
    let edit = config::install(text, &runtime(), &inputs).expect("install");
    let after =
        dump::dump_text(&node_root, &bin, scratch.path(), &edit.text).expect("containerd reads the result");
    let rt = runtime();
    dump::check_added(&before, &after, &rt.name, &rt.runtime_type, &rt.runtime_path)
        .unwrap_or_else(|e| panic!("containerd {version}: {e:#}\n{}", edit.text));
    let twice = config::install(&edit.text, &runtime(), &inputs).expect("install again");
    assert!(!twice.changed, "a second install changed the file");
    assert_eq!(twice.text, edit.text);
    edit
}

#[test]
fn every_fixture_is_registered_and_restored_on_its_containerd_versions() {
    for (name, versions) in [
        ("containerd-1.6-default.toml", &["1.6"][..]),
        ("containerd-1.7-default.toml", &["1.7"]),
        ("containerd-2.1-default.toml", &["2.1"]),
        ("aks-v2.toml", &["1.6", "1.7", "2.1"]),
        ("aks-v3.toml", &["2.1"]),
        ("mixed-v2-header-v3-tables.toml", &["2.1"]),
        ("odd-spacing-v3.toml", &["2.1"]),
        ("k3s-generated-config.toml", &["1.6", "1.7"]),
    ] {
        let original = fixture(name);
        for version in versions {
            let edit = install_checked(&original, version, None);
            assert!(edit.changed, "{name}: nothing added");
            assert!(
                edit.text.starts_with(&original),
                "{name}: the original bytes must stay first, as they were"
            );
            let removed = config::uninstall(&edit.text, &runtime()).unwrap();
            assert_eq!(removed.text, original, "{name}: uninstall must give the original back byte for byte");
        }
    }
}

#[test]
fn a_minimal_v2_config_keeps_runc_as_containerd_1_resolved_it() {
    // containerd 1.x drops its built-in runc once a file lists any runtime:
    // the installer writes runc out too, and the dump proves runc unchanged.
    for version in ["1.6", "1.7"] {
        let edit = install_checked("version = 2\n", version, None);
        assert!(edit.text.contains(".containerd.runtimes.runc]"), "{}", edit.text);
        assert_eq!(config::uninstall(&edit.text, &runtime()).unwrap().text, "version = 2\n");
    }
    let edit = install_checked("version = 3\n", "2.1", None);
    assert!(!edit.text.contains(".runtimes.runc]"), "containerd 2 keeps its default runc: {}", edit.text);
}

#[test]
fn an_installed_config_is_left_alone_and_uninstall_removes_the_entry() {
    let original = fixture("already-installed-v2.toml");
    for version in ["1.6", "1.7"] {
        let edit = install_checked(&original, version, None);
        assert!(!edit.changed, "already installed: nothing to change");
        assert_eq!(edit.text, original);
    }
    let removed = config::uninstall(&original, &runtime()).unwrap();
    assert!(removed.changed);
    assert!(config::registered_at(&removed.text, "wasmtime-custom").unwrap().is_empty());
    let node_root = NodeRoot::new("/");
    let scratch = tempfile::tempdir().unwrap();
    let bin = containerd("1.6");
    let before = dump::dump_text(&node_root, &bin, scratch.path(), &original).unwrap();
    let after = dump::dump_text(&node_root, &bin, scratch.path(), &removed.text).unwrap();
    dump::check_removed(&before, &after, "wasmtime-custom").unwrap();
}

#[test]
fn the_k3s_template_gets_the_runtime_and_renders_to_a_valid_config() {
    let template = fixture("k3s-config.toml.tmpl");
    let generated = fixture("k3s-generated-config.toml");
    let inputs = EditInputs {
        base_version: config::version_of(&generated).unwrap(),
        runc_defaults: None,
        base_lists_runc: config::lists_runc(&generated).unwrap(),
    };
    let edit = config::install(&template, &runtime(), &inputs).unwrap();
    assert!(edit.text.starts_with(&template), "the base template line stays first");
    // What k3s renders: its base (as in the generated file) plus the
    // template's own lines; containerd 1.7 must accept it with the runtime.
    let rendered = format!("{generated}{}", &edit.text[template.len()..]);
    let node_root = NodeRoot::new("/");
    let scratch = tempfile::tempdir().unwrap();
    let bin = containerd("1.7");
    let before = dump::dump_text(&node_root, &bin, scratch.path(), &generated).unwrap();
    let after = dump::dump_text(&node_root, &bin, scratch.path(), &rendered).unwrap();
    let rt = runtime();
    dump::check_added(&before, &after, &rt.name, &rt.runtime_type, &rt.runtime_path).unwrap();
    assert_eq!(config::uninstall(&edit.text, &runtime()).unwrap().text, template);
}

#[test]
fn a_corrupt_config_is_refused_with_the_parse_error() {
    let corrupt = fixture("corrupt.toml");
    let err = config::install(&corrupt, &runtime(), &EditInputs::default()).unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("not valid TOML"), "{message}");
    assert!(message.contains("line 4") || message.contains("4:"), "the parse error says where: {message}");
}
