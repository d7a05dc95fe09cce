//! The node's compile check: a fixed, generated WebAssembly module compiled with this
//! runtime's engine and timed. It takes about [`COMPILE_CHECK_NORM`] on an ordinary machine;
//! the worker compares it with a conservative limit at start (on SaladCloud a node far
//! beyond it is given up).

use std::time::{Duration, Instant};

use super::{ModuleError, Runtime};

/// About what the compile check takes on an ordinary machine (a loaded 2-core x86-64 VM:
/// 0.2 to 0.3 s in a debug build, less in a release build); the default limit is far beyond it.
pub const COMPILE_CHECK_NORM: Duration = Duration::from_millis(200);

/// Functions in the generated module, and arithmetic steps in each.
const FUNCTIONS: u32 = 100;
const STEPS: u32 = 40;

impl Runtime {
    /// Compiles the check module (never cached) and returns how long it took.
    /// `Err`: [`ModuleError::NodeFault`] when this node cannot compile (out of memory, a
    /// system call refused); any other error is the engine refusing it (a bug of ours).
    pub fn compile_check(&self) -> Result<Duration, ModuleError> {
        let bytes = check_module();
        let started = Instant::now();
        wasmtime::Module::new(self.engine(), &bytes)
            .map_err(|e| super::outcome::compile_error(&e))?;
        Ok(started.elapsed())
    }
}

/// A core module of [`FUNCTIONS`] functions `(i32) -> i32`, each [`STEPS`] rounds of
/// multiply, add, rotate and xor on its argument with constants of its own (so no two are
/// alike), all exported.
fn check_module() -> Vec<u8> {
    let mut out = b"\0asm\x01\0\0\0".to_vec();
    // Type section: one type, (i32) -> i32.
    section(&mut out, 1, &[1, 0x60, 1, 0x7f, 1, 0x7f]);
    // Function section: every function of type 0.
    let mut funcs = leb(FUNCTIONS);
    funcs.extend(std::iter::repeat_n(0, FUNCTIONS as usize));
    section(&mut out, 3, &funcs);
    // Export section: "f<i>" for each.
    let mut exports = leb(FUNCTIONS);
    for i in 0..FUNCTIONS {
        let name = format!("f{i}");
        exports.extend(leb(name.len() as u32));
        exports.extend(name.as_bytes());
        exports.push(0); // a function
        exports.extend(leb(i));
    }
    section(&mut out, 7, &exports);
    // Code section.
    let mut code = leb(FUNCTIONS);
    for i in 0..FUNCTIONS {
        let mut body = vec![0]; // no locals but the argument
        for s in 0..STEPS {
            let k = (i * 7919 + s * 104_729) & 0x3fff_ffff;
            body.extend([0x20, 0]); // local.get 0
            body.push(0x41); // i32.const
            body.extend(sleb(k as i32 | 1));
            body.push(0x6c); // i32.mul
            body.push(0x41);
            body.extend(sleb((k >> 3) as i32));
            body.push(0x6a); // i32.add
            body.push(0x41);
            body.extend(sleb((s % 31 + 1) as i32));
            body.push(0x77); // i32.rotl
            body.extend([0x20, 0]);
            body.push(0x73); // i32.xor
            body.extend([0x21, 0]); // local.set 0
        }
        body.extend([0x20, 0, 0x0b]); // local.get 0, end
        code.extend(leb(body.len() as u32));
        code.extend(body);
    }
    section(&mut out, 10, &code);
    out
}

fn section(out: &mut Vec<u8>, id: u8, body: &[u8]) {
    out.push(id);
    out.extend(leb(body.len() as u32));
    out.extend_from_slice(body);
}

fn leb(mut v: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn sleb(mut v: i32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        let done = (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_module_compiles() {
        let rt = Runtime::new(Default::default()).unwrap();
        let took = rt.compile_check().unwrap();
        assert!(took > Duration::ZERO);
        assert_eq!(leb(624_485), [0xe5, 0x8e, 0x26]);
        assert_eq!(sleb(-123_456), [0xc0, 0xbb, 0x78]);
    }
}
