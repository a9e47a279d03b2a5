//! `tav demo-web`: the browser demo with nothing to download. Builds the wasm package when it
//! is missing or older than its sources, packs the toy model (or `--model`) when its pack is
//! missing or older than the model, then serves the page, the package, the model and the
//! example clip on 127.0.0.1 until stopped.

use super::prelude::*;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::SystemTime;

/// The arguments of `tav demo-web`.
#[derive(Args)]
pub struct DemoWebCommand {
    /// Port on 127.0.0.1 (0: any free port; the URL printed names it).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The model the page loads from `./model/`: a diffusers folder or a single-file
    /// checkpoint, packed for the browser [default: the toy model, assets/toy-model].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Serve the wasm package as it is, even when it is missing or older than its sources.
    #[arg(long)]
    pub no_build: bool,
}

/// Where the site's paths come from (`www/` for everything not listed).
struct Site {
    www: PathBuf,
    pkg: PathBuf,
    model: PathBuf,
    example: PathBuf,
}

/// Runs `tav demo-web`.
pub fn command(args: DemoWebCommand) -> Result<()> {
    let root = checkout()?;
    let model = args
        .model
        .clone()
        .unwrap_or_else(|| root.join("assets/toy-model"));
    if !model.exists() {
        return Err(TavError::MissingFile {
            path: model.display().to_string(),
            what: "the model to serve (--model)".into(),
        });
    }
    // Bind first: a port in use is found before minutes of building.
    let listener = TcpListener::bind(("127.0.0.1", args.port)).map_err(|e| {
        TavError::InvalidInput(format!(
            "cannot serve on 127.0.0.1:{}: {e} (choose another with --port, or 0 for any)",
            args.port
        ))
    })?;

    let pkg = root.join("web/pkg");
    let wasm_sources = ["web/src", "web/js", "web/Cargo.toml", "core/src", "shaders"]
        .map(|p| root.join(p))
        .into_iter()
        .chain([root.join("Cargo.lock")])
        .collect::<Vec<_>>();
    let built = oldest(&[pkg.join("tav_web_bg.wasm"), pkg.join("tav.js")]);
    match (built, args.no_build) {
        (Some(built), _) if built >= newest(&wasm_sources) => {}
        (_, true) => eprintln!(
            "tav demo-web: the wasm package (web/pkg) is {} (--no-build: serving it as it is)",
            if built.is_some() { "stale" } else { "missing" }
        ),
        (built, false) => {
            eprintln!(
                "tav demo-web: the wasm package (web/pkg) is {}: building it with web/build.sh \
                 (several minutes the first time)",
                if built.is_some() {
                    "older than its sources"
                } else {
                    "missing"
                }
            );
            build_wasm(&root)?;
        }
    }

    let packed = packed_dir(&root, &model);
    let fresh = oldest(&[packed.join("manifest.json")])
        .is_some_and(|packed_at| packed_at >= newest(std::slice::from_ref(&model)))
        && std::fs::read_to_string(packed.join("source.txt")).ok() == Some(model_id(&model) + "\n");
    if !fresh {
        eprintln!(
            "tav demo-web: packing {} for the browser into {}",
            model.display(),
            packed.display()
        );
        // A stale pack's shards must not outlive it.
        let _ = std::fs::remove_dir_all(&packed);
        pack::pack_web(&pack::PackSpec {
            model: &model,
            out: &packed,
            variant: None,
            shard_bytes: 64 << 20,
            temporal: None,
            model_config: None,
            loras: &[],
        })?;
        job::write_atomic(
            &packed.join("source.txt"),
            (model_id(&model) + "\n").as_bytes(),
        )?;
    }

    let site = Site {
        www: root.join("www"),
        pkg,
        model: packed,
        example: root.join("assets/toy-clip.gif"),
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(args.port);
    println!("tav demo-web: open http://127.0.0.1:{port}/ and press Run (Ctrl-C stops)");
    std::io::stdout().flush().ok();
    let site = std::sync::Arc::new(site);
    for stream in listener.incoming().flatten() {
        let site = site.clone();
        std::thread::spawn(move || {
            // A client that goes away mid-file is not an error of the server's.
            let _ = serve(&site, stream);
        });
    }
    Ok(())
}

/// The tav checkout to serve from: the current folder or one above it with `www/` and `web/`,
/// else the one this binary was built from.
fn checkout() -> Result<PathBuf> {
    let is_checkout = |p: &Path| p.join("www/index.html").is_file() && p.join("web").is_dir();
    let here = std::env::current_dir().ok();
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf);
    here.iter()
        .flat_map(|p| p.ancestors().map(Path::to_path_buf).collect::<Vec<_>>())
        .chain(built_from)
        .find(|p| is_checkout(p))
        .ok_or_else(|| {
            TavError::InvalidInput(
                "tav demo-web serves the page from a tav checkout (its www/ and web/ folders): \
                 run it inside one"
                    .into(),
            )
        })
}

fn build_wasm(root: &Path) -> Result<()> {
    let script = root.join("web/build.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .current_dir(root)
        .status()
        .map_err(|e| TavError::InvalidInput(format!("cannot run {}: {e}", script.display())))?;
    if !status.success() {
        return Err(TavError::InvalidInput(format!(
            "building the wasm package failed ({} exited with {status}): it needs rustup's \
             wasm32-unknown-unknown target and wasm-bindgen-cli, which the script installs when \
             missing (see docs/browser.md)",
            script.display()
        )));
    }
    Ok(())
}

/// Where the model is packed: under `target/demo-web/`, one folder per model.
fn packed_dir(root: &Path, model: &Path) -> PathBuf {
    let name = std::fs::canonicalize(model)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    root.join("target/demo-web").join(name)
}

/// The model's full path: a pack made from another folder of the same name is stale.
fn model_id(model: &Path) -> String {
    std::fs::canonicalize(model)
        .unwrap_or_else(|_| model.to_path_buf())
        .display()
        .to_string()
}

/// The newest modification time of the files at or under `paths` (missing ones ignored).
fn newest(paths: &[PathBuf]) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = paths.to_vec();
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if let Ok(modified) = meta.modified() {
            newest = newest.max(modified);
        }
    }
    newest
}

/// The oldest modification time of `files`; `None` when any is missing.
fn oldest(files: &[PathBuf]) -> Option<SystemTime> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .try_fold(None::<SystemTime>, |acc, t| {
            t.map(|t| Some(acc.map_or(t, |a| a.min(t))))
        })
        .flatten()
}

/// Answers one request: GET or HEAD of a file under the site, nothing outside it.
fn serve(site: &Site, mut stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // The headers are not needed; read them so the client sees its request consumed.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return respond_text(&mut stream, "405 Method Not Allowed", "only GET and HEAD\n");
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    let Some(file) = resolve(site, path) else {
        return respond_text(
            &mut stream,
            "404 Not Found",
            &format!("not found: {path}\n"),
        );
    };
    let file = if file.is_dir() {
        file.join("index.html")
    } else {
        file
    };
    let Ok(mut body) = std::fs::File::open(&file) else {
        return respond_text(
            &mut stream,
            "404 Not Found",
            &format!("not found: {path}\n"),
        );
    };
    let length = body.metadata()?.len();
    // no-cache: a page reloaded after a rebuild gets the new package (the engine keeps its
    // own copy of the model's shards in the Cache API).
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {length}\r\n\
         Cache-Control: no-cache\r\nConnection: close\r\n\r\n",
        content_type(&file)
    )?;
    if method == "GET" {
        std::io::copy(&mut body, &mut stream)?;
    }
    stream.flush()
}

/// The file a URL path names, or `None` for anything that is not a plain relative path.
fn resolve(site: &Site, path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(path)?;
    let relative = decoded.strip_prefix('/')?;
    let segments: Vec<&str> = relative.split('/').filter(|s| !s.is_empty()).collect();
    if segments
        .iter()
        .any(|s| *s == "." || *s == ".." || s.contains('\\') || s.contains(':'))
    {
        return None;
    }
    let (base, rest) = match segments.split_first() {
        Some((&"pkg", rest)) => (&site.pkg, rest),
        Some((&"model", rest)) => (&site.model, rest),
        Some((&"examples", [name])) if *name == "toy-clip.gif" => {
            return Some(site.example.clone());
        }
        _ => (&site.www, &segments[..]),
    };
    Some(rest.iter().fold(base.clone(), |p, s| p.join(s)))
}

/// `%XX` escapes decoded; `None` for a malformed escape or bytes that are not UTF-8.
fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|s| !s.contains('\0'))
}

fn content_type(file: &Path) -> &'static str {
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        // WebAssembly.instantiateStreaming needs it.
        "wasm" => "application/wasm",
        "png" => "image/png",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "txt" | "md" | "ts" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn respond_text(stream: &mut TcpStream, status: &str, text: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        Site {
            www: "/w".into(),
            pkg: "/p".into(),
            model: "/m".into(),
            example: "/e.gif".into(),
        }
    }

    #[test]
    fn paths_map_into_the_site_and_nothing_escapes_it() {
        let s = site();
        let r = |p| resolve(&s, p);
        assert_eq!(r("/"), Some("/w".into()));
        assert_eq!(r("/app.js"), Some("/w/app.js".into()));
        assert_eq!(r("/pkg/tav.js"), Some("/p/tav.js".into()));
        assert_eq!(r("/model/manifest.json"), Some("/m/manifest.json".into()));
        assert_eq!(r("/model/unet%2F0.bin"), Some("/m/unet/0.bin".into()));
        assert_eq!(r("/examples/toy-clip.gif"), Some("/e.gif".into()));
        assert_eq!(
            r("/examples/other.gif"),
            Some("/w/examples/other.gif".into())
        );
        for bad in [
            "/../Cargo.toml",
            "/pkg/../../etc/passwd",
            "/%2e%2e/x",
            "/a/%2E%2E%2Fb",
            "/c:/x",
            "/a\\..\\b",
            "/%zz",
            "/%ff",
            "/%00",
            "relative",
        ] {
            assert_eq!(r(bad), None, "{bad} must not resolve");
        }
    }

    #[test]
    fn oldest_is_none_when_a_file_is_missing() {
        let dir = std::env::temp_dir().join(format!("tav-demo-web-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a");
        std::fs::write(&file, b"x").unwrap();
        assert!(oldest(std::slice::from_ref(&file)).is_some());
        assert!(oldest(&[file.clone(), dir.join("missing")]).is_none());
        assert!(newest(std::slice::from_ref(&dir)) >= oldest(&[file]).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
