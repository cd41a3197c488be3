//! Running the programs this workspace drives (ctr, kubectl,
//! kubernetes-validate, ldd, ip, ...): one place that turns "not installed"
//! and "failed" into errors that say what to do.

use std::io::ErrorKind;
use std::process::{Command, Output};

use anyhow::{Result, bail};

const INSTALL_HINT: &str = "run scripts/install-prerequisites.sh to install it";

/// Runs `command` to completion. A program that is not installed is an
/// error naming it and how to install it.
pub fn output(command: &mut Command) -> Result<Output> {
    let program = command.get_program().to_string_lossy().into_owned();
    match command.output() {
        Ok(output) => Ok(output),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("`{program}` is not installed (not found on PATH): {INSTALL_HINT}")
        }
        Err(e) => bail!("cannot run `{program}`: {e}"),
    }
}

/// Runs `command` and returns its stdout; fails with its status, stdout and
/// stderr unless it succeeds.
pub fn stdout(command: &mut Command) -> Result<String> {
    let out = output(command)?;
    if !out.status.success() {
        bail!("`{}` failed: {}", describe_command(command), describe(&out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Shorthand for [`stdout`] of `program args...`.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    stdout(Command::new(program).args(args))
}

/// An `Output` as text, for error messages.
pub fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn describe_command(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_says_how_to_install_it() {
        let err = run("wtc-no-such-program", &[]).unwrap_err().to_string();
        assert!(err.contains("`wtc-no-such-program` is not installed"), "{err}");
        assert!(err.contains("install-prerequisites"), "{err}");
    }

    #[test]
    fn a_failing_program_reports_its_output() {
        let err = run("sh", &["-c", "echo out; echo err >&2; exit 3"]).unwrap_err().to_string();
        assert!(err.contains("`sh -c echo out; echo err >&2; exit 3` failed"), "{err}");
        assert!(err.contains("exit status: 3") && err.contains("out") && err.contains("err"), "{err}");
        assert_eq!(run("sh", &["-c", "echo hi"]).unwrap(), "hi\n");
    }
}
