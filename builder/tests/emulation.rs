//! Foreign-architecture builds need qemu-user through binfmt_misc. When it is missing and
//! cannot be registered, kiln says exactly what to run. (Paths are redirected to empty temp
//! directories, so this runs anywhere, root or not, without touching the host's registrations.)
mod common;
use kiln::recipe::arch::Arch;

#[test]
fn missing_emulation_that_cannot_be_registered_is_a_clear_error() {
    if kiln::recipe::arch::Arch::host() == Some(Arch::Aarch64) {
        common::skip("aarch64 runs natively on this host: there is no emulation to register");
        return;
    }
    let misc = tempfile::tempdir().unwrap();
    let confs = tempfile::tempdir().unwrap();
    std::env::set_var("KILN_BINFMT_MISC", misc.path());
    std::env::set_var("KILN_BINFMT_CONF_DIRS", confs.path());
    assert!(!kiln::bootstrap::emulation::can_run(Arch::Aarch64));
    let err = format!("{:#}", kiln::bootstrap::emulation::ensure(Arch::Aarch64).unwrap_err());
    assert!(
        err.contains(
            "building aarch64 images on this x86_64 host needs qemu-user emulation registered with binfmt_misc"
        ),
        "{err}"
    );
    assert!(err.contains("apt-get install qemu-user-static binfmt-support"), "{err}");
    assert!(err.contains("cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register"), "{err}");
    assert!(err.contains(&format!("no qemu-aarch64.conf found in {}", confs.path().display())), "{err}");

    // A registered and enabled handler is recognised.
    std::fs::write(
        misc.path().join("qemu-aarch64"),
        "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n",
    )
    .unwrap();
    assert!(kiln::bootstrap::emulation::can_run(Arch::Aarch64));
    std::fs::write(misc.path().join("qemu-aarch64"), "disabled\n").unwrap();
    assert!(!kiln::bootstrap::emulation::can_run(Arch::Aarch64));
}
