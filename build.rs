//! Compiles the CUDA kernels in kernels/*.cu into one fatbin that the crate embeds.
//!
//! Or embeds a fatbin made elsewhere: QWEN_SCOPE_FATBIN=path (tools/build_cu12.sh makes one
//! with CUDA 12.4's NVRTC from PyPI for older drivers and GPUs, P100 and T4 on R550), with
//! QWEN_SCOPE_FATBIN_COMPILER naming what made it; its architectures are read from it.
//!
//! The fatbin holds SASS for every GPU architecture the local nvcc can target from sm_60
//! up (or the list in QWEN_SCOPE_CUDA_ARCHS, e.g. "75,80,90") plus PTX for the newest, so
//! no JIT is needed on any listed GPU. All .cu files are compiled as one translation unit
//! (a generated file that #includes them), which gives one module to load at run time.
//!
//! Without nvcc the build still succeeds, CPU only, with a warning; the crate then reports
//! at run time how to rebuild. With CI=true (or QWEN_SCOPE_REQUIRE_CUDA=1) a missing nvcc
//! or a kernel that does not compile fails the build with nvcc's message.
//!
//! The result is cached in OUT_DIR under a hash of the sources, the nvcc version and the
//! flags, so a rerun of this script (e.g. after an unrelated environment change) does not
//! recompile the kernels.

use std::collections::hash_map::DefaultHasher;
use std::env;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Oldest architecture we build SASS for.
const MIN_ARCH: u32 = 60;
const FATBIN: &str = "qwen_scope_kernels.fatbin";
const NVCC_FLAGS: &[&str] = &["-O3", "-std=c++17"];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(qwen_scope_kernels)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "QWEN_SCOPE_CUDA_ARCHS",
        "QWEN_SCOPE_FATBIN",
        "QWEN_SCOPE_FATBIN_COMPILER",
        "QWEN_SCOPE_REQUIRE_CUDA",
        "CI",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let strict = env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
        || env::var("QWEN_SCOPE_REQUIRE_CUDA").is_ok_and(|v| !v.is_empty() && v != "0");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());

    let built = match env::var_os("QWEN_SCOPE_FATBIN").filter(|p| !p.is_empty()) {
        Some(path) => prebuilt(Path::new(&path), &out_dir),
        None => build(&manifest, &out_dir),
    };
    match built {
        Ok(Built {
            compiler,
            sass,
            ptx,
        }) => {
            let sass: Vec<String> = sass.iter().map(u32::to_string).collect();
            println!("cargo:rustc-cfg=qwen_scope_kernels");
            println!("cargo:rustc-env=QWEN_SCOPE_CUDA_SASS={}", sass.join(","));
            println!("cargo:rustc-env=QWEN_SCOPE_CUDA_PTX={ptx}");
            println!("cargo:rustc-env=QWEN_SCOPE_CUDA_COMPILER={compiler}");
        }
        Err(e) => {
            if strict {
                eprintln!(
                    "error: CUDA kernels are required here (CI=true or QWEN_SCOPE_REQUIRE_CUDA \
                     set) but could not be built:\n{e}"
                );
                std::process::exit(1);
            }
            for line in e.lines().take(40) {
                println!("cargo:warning={line}");
            }
            println!(
                "cargo:warning=qwen-scope is built without CUDA kernels (CPU only). To build \
                 them: install the CUDA toolkit (or the pip wheels, see docs/CUDA.md), set NVCC \
                 to the nvcc binary if it is not found, then run `cargo build --release` again."
            );
        }
    }
}

struct Built {
    /// What compiled the kernels, e.g. "nvcc 13.0.88" or "NVRTC 12.4".
    compiler: String,
    sass: Vec<u32>,
    /// The PTX architecture (0: none).
    ptx: u32,
}

/// Embeds the fatbin at `path` as it is, after reading which SASS and PTX it holds.
fn prebuilt(path: &Path, out_dir: &Path) -> Result<Built, String> {
    println!("cargo:rerun-if-changed={}", path.display());
    let data = fs::read(path).map_err(|e| format!("QWEN_SCOPE_FATBIN={}: {e}", path.display()))?;
    let (sass, ptx) =
        fatbin_archs(&data).map_err(|e| format!("QWEN_SCOPE_FATBIN={}: {e}", path.display()))?;
    fs::write(out_dir.join(FATBIN), &data).map_err(|e| format!("cannot copy the fatbin: {e}"))?;
    let _ = fs::remove_file(out_dir.join("qwen_scope_kernels.key"));
    let compiler =
        env::var("QWEN_SCOPE_FATBIN_COMPILER").unwrap_or_else(|_| "a prebuilt fatbin".into());
    let list: Vec<String> = sass.iter().map(|a| format!("sm_{a}")).collect();
    let _ = fs::write(
        out_dir.join("qwen_scope_kernels.txt"),
        format!(
            "{compiler} ({})\nSASS: {}\nPTX: {}\nfatbin: {} bytes\n",
            path.display(),
            list.join(" "),
            if ptx > 0 {
                format!("compute_{ptx}")
            } else {
                "none".into()
            },
            data.len()
        ),
    );
    Ok(Built {
        compiler,
        sass,
        ptx,
    })
}

/// The SASS architectures and the newest PTX architecture of a fatbin container: a 16-byte
/// header (magic 0xBA55ED50, u16 version, u16 header size, u64 size), then entries of a u16
/// kind (1 PTX, 2 ELF), u32 header size and u64 payload size at 4 and 8, the architecture
/// as u32 at 28 (docs/CUDA.md).
fn fatbin_archs(data: &[u8]) -> Result<(Vec<u32>, u32), String> {
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if u32_at(0) != Some(0xBA55_ED50) {
        return Err("not a fatbin (no 0xBA55ED50 magic)".into());
    }
    let header = u16_at(6).unwrap_or(0) as usize;
    let end = header + u64_at(8).unwrap_or(0) as usize;
    let (mut sass, mut ptx, mut at) = (Vec::new(), 0, header);
    while at + 32 <= end.min(data.len()) {
        let (Some(kind), Some(eh), Some(size), Some(arch)) =
            (u16_at(at), u32_at(at + 4), u64_at(at + 8), u32_at(at + 28))
        else {
            break;
        };
        match kind {
            1 => ptx = ptx.max(arch),
            2 => sass.push(arch),
            _ => {}
        }
        at += eh as usize + size as usize;
    }
    sass.sort_unstable();
    sass.dedup();
    if sass.is_empty() && ptx == 0 {
        return Err("the fatbin holds no SASS or PTX".into());
    }
    Ok((sass, ptx))
}

fn build(manifest: &Path, out_dir: &Path) -> Result<Built, String> {
    let nvcc = find_nvcc(manifest)?;
    println!("cargo:rerun-if-changed={}", nvcc.display());
    let nvcc_version = nvcc_version(&nvcc)?;
    let archs = archs(&nvcc)?;

    let kernel_dir = manifest.join("kernels");
    let mut sources: Vec<PathBuf> = fs::read_dir(&kernel_dir)
        .map_err(|e| format!("cannot read {}: {e}", kernel_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    if sources.is_empty() {
        return Err(format!("no .cu files in {}", kernel_dir.display()));
    }

    // The unity translation unit: every kernel file, in name order.
    let mut unity = String::from("// Generated by build.rs: all of kernels/*.cu.\n");
    for s in &sources {
        unity.push_str(&format!("#include \"{}\"\n", s.display()));
    }

    let mut args: Vec<String> = vec!["-fatbin".into()];
    args.extend(NVCC_FLAGS.iter().map(|s| s.to_string()));
    let threads = env::var("NUM_JOBS").unwrap_or_else(|_| "1".into());
    args.push(format!("--threads={threads}"));
    args.push(format!("-I{}", kernel_dir.display()));
    for a in &archs {
        args.push(format!("-gencode=arch=compute_{a},code=sm_{a}"));
    }
    let newest = *archs.iter().max().unwrap();
    args.push(format!(
        "-gencode=arch=compute_{newest},code=compute_{newest}"
    ));

    // Cache key: sources (including headers), nvcc identity, flags.
    let mut h = DefaultHasher::new();
    nvcc.hash(&mut h);
    nvcc_version.hash(&mut h);
    args.hash(&mut h);
    let mut inputs: Vec<PathBuf> = fs::read_dir(&kernel_dir)
        .map_err(|e| format!("cannot read {}: {e}", kernel_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    inputs.sort();
    for p in &inputs {
        p.hash(&mut h);
        fs::read(p)
            .map_err(|e| format!("cannot read {}: {e}", p.display()))?
            .hash(&mut h);
    }
    let key = format!("{:016x}", h.finish());
    let fatbin = out_dir.join(FATBIN);
    let key_file = out_dir.join("qwen_scope_kernels.key");
    if fatbin.is_file() && fs::read_to_string(&key_file).is_ok_and(|k| k == key) {
        return Ok(Built {
            compiler: format!("nvcc {nvcc_version}"),
            sass: archs,
            ptx: newest,
        });
    }
    let _ = fs::remove_file(&key_file);

    let unity_path = out_dir.join("qwen_scope_kernels.cu");
    fs::write(&unity_path, unity).map_err(|e| format!("cannot write unity file: {e}"))?;
    let tmp = out_dir.join(format!("{FATBIN}.tmp"));
    let started = Instant::now();
    let output = Command::new(&nvcc)
        .args(&args)
        .arg("-o")
        .arg(&tmp)
        .arg(&unity_path)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    if !output.status.success() {
        return Err(format!(
            "nvcc failed ({}) compiling kernels/*.cu:\n{}{}\ncommand: {} {} -o {} {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            nvcc.display(),
            args.join(" "),
            tmp.display(),
            unity_path.display()
        ));
    }
    fs::rename(&tmp, &fatbin).map_err(|e| format!("cannot move the fatbin into place: {e}"))?;
    fs::write(&key_file, &key).map_err(|e| format!("cannot write {}: {e}", key_file.display()))?;
    // A record of the last compile (cargo shows no output of a successful build script).
    let size = fs::metadata(&fatbin).map(|m| m.len()).unwrap_or(0);
    let archs_s: Vec<String> = archs.iter().map(|a| format!("sm_{a}")).collect();
    let _ = fs::write(
        out_dir.join("qwen_scope_kernels.txt"),
        format!(
            "nvcc {nvcc_version} ({})\nSASS: {}\nPTX: compute_{newest}\nfatbin: {size} bytes\n\
             compile: {:.1} s with --threads={threads}\n",
            nvcc.display(),
            archs_s.join(" "),
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(Built {
        compiler: format!("nvcc {nvcc_version}"),
        sass: archs,
        ptx: newest,
    })
}

/// nvcc from $NVCC, $CUDA_HOME/bin, $CUDA_PATH/bin, PATH, /usr/local/cuda/bin, then the
/// pip wheels (nvidia-cuda-nvcc) of python3 and of a .venv-tools venv in the crate root.
/// An explicit $NVCC is authoritative: if it does not exist, nothing else is tried.
fn find_nvcc(manifest: &Path) -> Result<PathBuf, String> {
    let exe = if cfg!(windows) { "nvcc.exe" } else { "nvcc" };
    if let Some(p) = env::var_os("NVCC").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("NVCC={} does not exist", p.display()))
        };
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env::var_os(var).filter(|p| !p.is_empty()) {
            candidates.push(PathBuf::from(root).join("bin").join(exe));
        }
    }
    if let Some(path) = env::var_os("PATH") {
        candidates.extend(env::split_paths(&path).map(|d| d.join(exe)));
    }
    candidates.push(PathBuf::from("/usr/local/cuda/bin").join(exe));
    let mut site_dirs = Vec::new();
    if let Some(d) = python_purelib(Path::new("python3")) {
        site_dirs.push(d);
    }
    let venv = manifest.join(".venv-tools");
    if venv.is_dir() {
        let py = venv.join(if cfg!(windows) {
            "Scripts/python.exe"
        } else {
            "bin/python3"
        });
        if let Some(d) = python_purelib(&py) {
            site_dirs.push(d);
        }
        // Without running the venv's python: lib/python3.*/site-packages.
        if let Ok(rd) = fs::read_dir(venv.join("lib")) {
            let mut libs: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path().join("site-packages")))
                .collect();
            libs.sort();
            site_dirs.extend(libs);
        }
    }
    for d in site_dirs {
        // CUDA 13 wheels, then the CUDA 12 layout (nvidia-cuda-nvcc-cu12).
        candidates.push(d.join("nvidia/cu13/bin").join(exe));
        candidates.push(d.join("nvidia/cuda_nvcc/bin").join(exe));
    }
    let tried = candidates.len();
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        format!(
            "nvcc not found (looked at $NVCC, $CUDA_HOME/bin, $CUDA_PATH/bin, PATH, \
             /usr/local/cuda/bin and python nvidia-cuda-nvcc wheels: {tried} places)"
        )
    })
}

fn python_purelib(python: &Path) -> Option<PathBuf> {
    let out = Command::new(python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// "13.0" style release number from `nvcc --version`.
fn nvcc_version(nvcc: &Path) -> Result<String, String> {
    let out = Command::new(nvcc)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --version failed: {}",
            nvcc.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // "Cuda compilation tools, release 13.0, V13.0.88"
    let v = text
        .lines()
        .find_map(|l| l.split(", V").nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    Ok(v)
}

/// SASS targets: QWEN_SCOPE_CUDA_ARCHS, or every plain sm_XX >= MIN_ARCH that nvcc lists.
fn archs(nvcc: &Path) -> Result<Vec<u32>, String> {
    if let Ok(list) = env::var("QWEN_SCOPE_CUDA_ARCHS") {
        let mut archs = Vec::new();
        for item in list.split([',', ' ', ';']).filter(|s| !s.is_empty()) {
            let digits = item
                .trim_start_matches("sm_")
                .trim_start_matches("compute_")
                .replace('.', "");
            let a: u32 = digits.parse().map_err(|_| {
                format!("QWEN_SCOPE_CUDA_ARCHS: {item:?} is not an architecture like 75 or sm_80")
            })?;
            archs.push(a);
        }
        archs.sort_unstable();
        archs.dedup();
        if archs.is_empty() {
            return Err("QWEN_SCOPE_CUDA_ARCHS is set but lists no architecture".into());
        }
        return Ok(archs);
    }
    let mut archs = Vec::new();
    for (flag, prefix) in [("--list-gpu-code", "sm_"), ("--list-gpu-arch", "compute_")] {
        let Ok(out) = Command::new(nvcc).arg(flag).output() else {
            continue;
        };
        if !out.status.success() {
            continue;
        }
        for tok in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            // Plain targets only: sm_90a / sm_100f are arch-specific variants.
            if let Some(a) = tok.strip_prefix(prefix).and_then(|n| n.parse::<u32>().ok()) {
                if a >= MIN_ARCH {
                    archs.push(a);
                }
            }
        }
        if !archs.is_empty() {
            break;
        }
    }
    archs.sort_unstable();
    archs.dedup();
    if archs.is_empty() {
        return Err(format!(
            "{} lists no GPU architecture >= sm_{MIN_ARCH}; set QWEN_SCOPE_CUDA_ARCHS",
            nvcc.display()
        ));
    }
    Ok(archs)
}
