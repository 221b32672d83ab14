//! The prefixed C API: `tests/c/api.c` (and a C++ file) compiled against
//! `allocator/include/heaplens.h` and linked with `-lheaplens`, without `LD_PRELOAD`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    Scratch, command, compile_with, has_stats_summary, include_dir, preload_lib, run, test_file,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Compiles `source` (under `tests/c`) with `compiler` against heaplens.h and libheaplens.so.
fn build(scratch: &Scratch, compiler: &str, source: &str) -> PathBuf {
    let lib_dir = preload_lib()
        .parent()
        .expect("library directory")
        .to_path_buf();
    let out = scratch.join(
        Path::new(source)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("prog"),
    );
    let include = format!("-I{}", include_dir().display());
    let link = format!("-L{}", lib_dir.display());
    let rpath = format!("-Wl,-rpath,{}", lib_dir.display());
    compile_with(
        compiler,
        &[test_file(&format!("c/{source}"))],
        &out,
        &[&include, &link, &rpath, "-lheaplens", "-ldl"],
    );
    out
}

#[test]
fn every_hl_function_works_from_c() {
    let scratch = Scratch::new("api");
    let exe = build(&scratch, "cc", "api.c");
    let out = run(&mut command(&exe), TIMEOUT);
    out.assert_success("api.c linked with -lheaplens");
    let expected = "hl_malloc from: libheaplens.so\n\
                    ok hl_malloc\n\
                    ok hl_calloc\n\
                    ok hl_realloc\n\
                    ok hl_malloc_aligned\n\
                    ok mixed\n\
                    ok threads\n\
                    ok hl_stats_print\n\
                    done\n";
    assert_eq!(out.stdout, expected, "{}", out.describe());
    // hl_stats_print wrote the summary to stderr, and nothing else went there.
    assert!(
        has_stats_summary(&out.stderr),
        "no statistics summary on stderr\n{}",
        out.describe()
    );
    assert!(!out.stderr.contains("FAIL"), "{}", out.describe());
}

#[test]
fn header_links_from_cpp_and_nothing_is_printed_unasked() {
    // C++ needs the header's extern "C" to link at all. The program never calls hl_stats_print
    // and HEAPLENS_SHOW_STATS is unset, so stderr stays empty: the summary in the test above
    // comes from hl_stats_print.
    let scratch = Scratch::new("api-cpp");
    let exe = build(&scratch, "c++", "api_cpp.cpp");
    let out = run(&mut command(&exe), TIMEOUT);
    out.assert_success("api_cpp.cpp linked with -lheaplens");
    assert_eq!(out.stdout, "c++ ok\n", "{}", out.describe());
    assert_eq!(out.stderr, "", "{}", out.describe());
}

#[test]
fn header_compiles_cleanly_in_c_and_cpp() {
    // Strict, pedantic, both languages, several standards: a header error fails the build.
    let scratch = Scratch::new("header");
    let src = scratch.join("only_header.c");
    std::fs::write(
        &src,
        "#include \"heaplens.h\"\n#include \"heaplens.h\"\nint main(void) { return 0; }\n",
    )
    .expect("write only_header.c");
    let include = format!("-I{}", include_dir().display());
    for (compiler, std) in [
        ("cc", "-std=c99"),
        ("cc", "-std=c11"),
        ("c++", "-std=c++11"),
        ("c++", "-std=c++17"),
    ] {
        let (lang, extra) = if compiler == "cc" {
            ("c", "-Wstrict-prototypes")
        } else {
            ("c++", "-Wold-style-cast")
        };
        let out = run(
            command(compiler)
                .args([
                    "-x",
                    lang,
                    std,
                    extra,
                    "-pedantic-errors",
                    "-Wall",
                    "-Wextra",
                    "-Werror",
                    "-fsyntax-only",
                ])
                .arg(&include)
                .arg(&src),
            TIMEOUT,
        );
        out.assert_success(&format!("heaplens.h with {compiler} {std}"));
    }
}

#[test]
fn dlopened_library_gives_each_thread_its_own_heap() {
    let scratch = Scratch::new("dlopen");
    let exe = scratch.join("dlopen");
    compile_with("cc", &[test_file("c/dlopen.c")], &exe, &["-ldl"]);
    let out = run(command(&exe).arg(preload_lib()), TIMEOUT);
    out.assert_success("dlopen.c loading libheaplens.so");
    assert_eq!(out.stdout, "ok\n", "{}", out.describe());
}
