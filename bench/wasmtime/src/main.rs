//! Runs one exported function of a canister module under wasmtime with stub `ic0` imports,
//! `--runs` times, and prints the median time per run and instructions/s computed with the
//! instruction count that wasmi's fuel measured for the same call (`--instructions`).
//!
//! ```text
//! cairn-bench-wasmtime --module target/bench_exec_loop.wasm --export "canister_update work" \
//!     --arg-hex 00c2eb0b --runs 5 --instructions 1400000012 [--fuel]
//! ```
//! Output: human lines, then one machine line
//! `wasmtime-result engine=<..> runs=<n> median_s=<f> min_s=<f> instr_per_s=<f> reply_hex=<..>`.

use std::process::ExitCode;
use std::time::{Duration, Instant};
use wasmtime::{
    Caller, Config, Engine, Extern, Func, Instance, Linker, Module, OptLevel, Store, Val, ValType,
};

/// The state a stubbed `ic0` sees: the message argument and the reply built so far.
#[derive(Default)]
struct Ic0 {
    arg: Vec<u8>,
    reply: Vec<u8>,
    replied: bool,
}

struct Options {
    module: String,
    export: String,
    arg: Vec<u8>,
    runs: usize,
    instructions: u64,
    fuel: bool,
}

fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    if s.len() % 2 != 0 {
        return Err(format!("odd-length hex: {s}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| format!("bad hex: {s}"))
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn options() -> Result<Options, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let need = |name: &str| value(name).ok_or_else(|| format!("missing {name}"));
    Ok(Options {
        module: need("--module")?,
        export: need("--export")?,
        arg: parse_hex(&value("--arg-hex").unwrap_or_default())?,
        runs: value("--runs")
            .map(|v| v.parse().map_err(|_| format!("--runs: {v}")))
            .transpose()?
            .unwrap_or(5)
            .max(1),
        instructions: need("--instructions")?
            .parse()
            .map_err(|_| "--instructions: not a number".to_string())?,
        fuel: args.iter().any(|a| a == "--fuel"),
    })
}

/// Names under which a canister's memory 0 may be exported: cairn's preparation exports it
/// as `__cairn_memory` (node/src/execution/wasm.rs); a raw module may use `memory`.
const MEMORY_EXPORTS: [&str; 2] = ["__cairn_memory", "memory"];
/// cairn's preparation turns a `(start)` section into this export, run on instantiation.
const START_EXPORT: &str = "__cairn_start";

fn memory(caller: &mut Caller<'_, Ic0>) -> wasmtime::Result<wasmtime::Memory> {
    for name in MEMORY_EXPORTS {
        if let Some(Extern::Memory(m)) = caller.get_export(name) {
            return Ok(m);
        }
    }
    Err(wasmtime::format_err!("module exports no memory"))
}

fn arg_u64(v: &Val) -> u64 {
    match v {
        Val::I32(x) => *x as u32 as u64,
        Val::I64(x) => *x as u64,
        _ => 0,
    }
}

/// One stub per import of the module. The ones the CPU-bound path uses are real (argument,
/// reply, trap); every other import returns zeros and is listed on stderr.
fn link(engine: &Engine, module: &Module, store: &mut Store<Ic0>) -> Result<Linker<Ic0>, String> {
    let mut linker = Linker::new(engine);
    let mut zero_stubs = Vec::new();
    for import in module.imports() {
        if import.module() != "ic0" {
            return Err(format!(
                "import {}.{} is not ic0",
                import.module(),
                import.name()
            ));
        }
        let Some(ty) = import.ty().func().cloned() else {
            return Err(format!("import ic0.{} is not a function", import.name()));
        };
        let name = import.name().to_string();
        let f = match name.as_str() {
            "msg_arg_data_size" => Func::new(&mut *store, ty, |c, _, out| {
                out[0] = Val::I32(c.data().arg.len() as i32);
                Ok(())
            }),
            "msg_arg_data_copy" => Func::new(&mut *store, ty, |mut c, a, _| {
                let (dst, off, size) = (arg_u64(&a[0]), arg_u64(&a[1]), arg_u64(&a[2]));
                let bytes = c
                    .data()
                    .arg
                    .get(off as usize..(off + size) as usize)
                    .ok_or_else(|| wasmtime::format_err!("msg_arg_data_copy out of range"))?
                    .to_vec();
                let mem = memory(&mut c)?;
                mem.write(&mut c, dst as usize, &bytes)
                    .map_err(|e| wasmtime::format_err!("msg_arg_data_copy: {e}"))?;
                Ok(())
            }),
            "msg_reply_data_append" => Func::new(&mut *store, ty, |mut c, a, _| {
                let (src, size) = (arg_u64(&a[0]) as usize, arg_u64(&a[1]) as usize);
                let mut buf = vec![0u8; size];
                let mem = memory(&mut c)?;
                mem.read(&c, src, &mut buf)
                    .map_err(|e| wasmtime::format_err!("msg_reply_data_append: {e}"))?;
                c.data_mut().reply.extend_from_slice(&buf);
                Ok(())
            }),
            "msg_reply" => Func::new(&mut *store, ty, |mut c, _, _| {
                c.data_mut().replied = true;
                Ok(())
            }),
            "trap" => Func::new(&mut *store, ty, |mut c, a, _| {
                let (src, size) = (arg_u64(&a[0]) as usize, arg_u64(&a[1]) as usize);
                let mut buf = vec![0u8; size.min(4096)];
                let mem = memory(&mut c)?;
                let _ = mem.read(&c, src, &mut buf);
                Err(wasmtime::format_err!(
                    "canister trapped: {}",
                    String::from_utf8_lossy(&buf)
                ))
            }),
            _ => {
                zero_stubs.push(name.clone());
                Func::new(&mut *store, ty, |_, _, out| {
                    for o in out.iter_mut() {
                        *o = match o {
                            Val::I64(_) => Val::I64(0),
                            Val::F32(_) => Val::F32(0),
                            Val::F64(_) => Val::F64(0),
                            _ => Val::I32(0),
                        };
                    }
                    Ok(())
                })
            }
        };
        linker
            .define(&mut *store, "ic0", &name, f)
            .map_err(|e| format!("define ic0.{name}: {e}"))?;
    }
    if !zero_stubs.is_empty() {
        eprintln!("(zero-returning stubs: {})", zero_stubs.join(", "));
    }
    Ok(linker)
}

/// One call of the export in a fresh instance: (time of the call alone, reply bytes).
fn run_once(engine: &Engine, module: &Module, o: &Options) -> Result<(Duration, Vec<u8>), String> {
    let mut store = Store::new(
        engine,
        Ic0 {
            arg: o.arg.clone(),
            ..Ic0::default()
        },
    );
    if o.fuel {
        store.set_fuel(u64::MAX).map_err(|e| e.to_string())?;
    }
    let linker = link(engine, module, &mut store)?;
    let instance: Instance = linker
        .instantiate(&mut store, module)
        .map_err(|e| format!("instantiate: {e}"))?;
    if let Some(start) = instance.get_func(&mut store, START_EXPORT) {
        start
            .call(&mut store, &[], &mut [])
            .map_err(|e| format!("{START_EXPORT}: {e:?}"))?;
    }
    let func = instance
        .get_func(&mut store, &o.export)
        .ok_or_else(|| format!("no export `{}`", o.export))?;
    let ty = func.ty(&store);
    if ty.params().len() != 0 {
        return Err(format!("`{}` takes parameters", o.export));
    }
    let mut results: Vec<Val> = ty
        .results()
        .map(|t| match t {
            ValType::I64 => Val::I64(0),
            _ => Val::I32(0),
        })
        .collect();
    let start = Instant::now();
    func.call(&mut store, &[], &mut results)
        .map_err(|e| format!("call `{}`: {e:?}", o.export))?;
    let elapsed = start.elapsed();
    if !store.data().replied {
        return Err(format!("`{}` returned without msg_reply", o.export));
    }
    Ok((elapsed, store.data().reply.clone()))
}

fn run() -> Result<(), String> {
    let o = options()?;
    let wasm = std::fs::read(&o.module).map_err(|e| format!("{}: {e}", o.module))?;
    let mut config = Config::new();
    config
        .cranelift_opt_level(OptLevel::Speed)
        .wasm_memory64(true)
        .consume_fuel(o.fuel);
    let engine = Engine::new(&config).map_err(|e| format!("engine: {e}"))?;
    let t = Instant::now();
    let module = Module::new(&engine, &wasm).map_err(|e| format!("compile: {e}"))?;
    let compile_s = t.elapsed().as_secs_f64();
    let engine_name = if o.fuel {
        "wasmtime 48 (Cranelift, fuel metering on)"
    } else {
        "wasmtime 48 (Cranelift, no metering)"
    };
    let mut times = Vec::with_capacity(o.runs);
    let mut reply = Vec::new();
    for i in 0..o.runs {
        let (d, r) = run_once(&engine, &module, &o)?;
        if i > 0 && r != reply {
            return Err("replies differ between runs".into());
        }
        reply = r;
        times.push(d);
    }
    times.sort();
    let median = times[times.len() / 2].as_secs_f64();
    let min = times[0].as_secs_f64();
    let ips = o.instructions as f64 / median;
    eprintln!(
        "{engine_name}: compiled in {compile_s:.3} s; {} runs, median {median:.4} s, min {min:.4} s",
        o.runs
    );
    println!(
        "wasmtime-result engine={} runs={} median_s={median:.6} min_s={min:.6} instr_per_s={ips:.0} reply_hex={}",
        if o.fuel { "fuel" } else { "plain" },
        o.runs,
        hex(&reply)
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-bench-wasmtime: {e}");
            ExitCode::FAILURE
        }
    }
}
