//! With the `libtorch` feature, the `tav` binary records where libtorch was found at build
//! time (an rpath), so it runs without LD_LIBRARY_PATH. Without the feature: nothing.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{dir}");
    }
}
