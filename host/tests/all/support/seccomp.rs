//! A node that cannot make memory executable: a seccomp filter, installed in a child process
//! before it runs `taskhost`, that fails every `mprotect` asking for `PROT_EXEC` with ENOMEM.
//! The kernel's own answer to wasmtime's publishing of compiled code, as on a node out of
//! memory; everything else the process does (its loader's `mmap`s, its heap) is allowed.

/// `AUDIT_ARCH_X86_64` (linux/audit.h): the filter acts only on this architecture's calls.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// Installs the filter in the calling process. For `Command::pre_exec`: between fork and
/// exec it calls only `prctl`, which is async-signal-safe.
pub fn refuse_executable_memory() -> std::io::Result<()> {
    use libc::{
        BPF_ABS, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W, SECCOMP_RET_ALLOW,
        SECCOMP_RET_ERRNO, sock_filter, sock_fprog,
    };
    let op = |code: u32, k: u32, jt: u8, jf: u8| sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    // struct seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 i (low half first).
    let program = [
        op(BPF_LD | BPF_W | BPF_ABS, 4, 0, 0),
        op(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        op(BPF_RET | BPF_K, SECCOMP_RET_ALLOW, 0, 0),
        op(BPF_LD | BPF_W | BPF_ABS, 0, 0, 0),
        op(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_mprotect as u32, 0, 3),
        op(BPF_LD | BPF_W | BPF_ABS, 16 + 2 * 8, 0, 0),
        op(BPF_JMP | BPF_JSET | BPF_K, libc::PROT_EXEC as u32, 0, 1),
        op(
            BPF_RET | BPF_K,
            SECCOMP_RET_ERRNO | libc::ENOMEM as u32,
            0,
            0,
        ),
        op(BPF_RET | BPF_K, SECCOMP_RET_ALLOW, 0, 0),
    ];
    let fprog = sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with these arguments reads `fprog` and the program it points to, both
    // alive for the call; no_new_privs first, as an unprivileged filter requires.
    let installed = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &fprog as *const sock_fprog,
            ) == 0
    };
    if installed {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
