//! The documentation's links: every relative link and image in `README.md`, `BENCHMARKS.md`,
//! `docs/*.md` and `www/README.md` must name a file or folder that exists, and every `#anchor`
//! (in the same page or in `page.md#anchor`) a heading of that page, slugged as GitHub slugs
//! headings. Links inside fenced code blocks and inline code spans are not links and are
//! skipped; `http(s)://` and `mailto:` targets are not checked. Also: the README stays short.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

/// The repository's root (`tests/` is the crate's folder).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The markdown pages checked, relative to the root.
fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut pages = vec![PathBuf::from("README.md"), PathBuf::from("www/README.md")];
    if root.join("BENCHMARKS.md").exists() {
        pages.push(PathBuf::from("BENCHMARKS.md"));
    }
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| PathBuf::from("docs").join(p.file_name().expect("a file name")))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// GitHub's heading anchor: lowercase; drop every character that is not alphanumeric, a space,
/// a hyphen or an underscore; spaces become hyphens. (Duplicates are numbered by `anchors`.)
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Whether a line opens or closes a fenced code block: its fence character and length.
fn fence(line: &str) -> Option<(char, usize)> {
    let trimmed = line.trim_start();
    let c = trimmed.chars().next()?;
    if c != '`' && c != '~' {
        return None;
    }
    let n = trimmed.chars().take_while(|&x| x == c).count();
    (n >= 3).then_some((c, n))
}

/// The page's lines with fenced code blocks blanked (line numbers kept).
fn without_fences(text: &str) -> Vec<String> {
    let mut open: Option<(char, usize)> = None;
    text.lines()
        .map(|line| match (open, fence(line)) {
            (None, Some(f)) => {
                open = Some(f);
                String::new()
            }
            (Some((c, n)), Some((c2, n2))) if c == c2 && n2 >= n && line.trim().len() == n2 => {
                open = None;
                String::new()
            }
            (Some(_), _) => String::new(),
            (None, None) => line.to_string(),
        })
        .collect()
}

/// The page's text outside fences with inline code spans blanked, as characters with the
/// 1-based line each is on. A code span may run over lines within a paragraph; a run of
/// backticks with no closing run before the paragraph ends is literal.
fn prose(text: &str) -> Vec<(char, usize)> {
    let lines = without_fences(text);
    let mut chars: Vec<(char, usize)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        chars.extend(line.chars().map(|c| (c, i + 1)));
        chars.push(('\n', i + 1));
    }
    let run_at = |chars: &[(char, usize)], i: usize| {
        chars[i..].iter().take_while(|(c, _)| *c == '`').count()
    };
    let mut i = 0;
    while i < chars.len() {
        if chars[i].0 != '`' {
            i += 1;
            continue;
        }
        let n = run_at(&chars, i);
        // Look for a closing run of the same length before a blank line.
        let mut j = i + n;
        let mut close = None;
        while j < chars.len() {
            if chars[j].0 == '\n' && chars.get(j + 1).is_some_and(|(c, _)| *c == '\n') {
                break;
            }
            if chars[j].0 == '`' {
                let m = run_at(&chars, j);
                if m == n {
                    close = Some(j);
                    break;
                }
                j += m;
            } else {
                j += 1;
            }
        }
        match close {
            Some(j) => {
                for c in &mut chars[i..j + n] {
                    if c.0 != '\n' {
                        c.0 = ' ';
                    }
                }
                i = j + n;
            }
            None => i += n,
        }
    }
    chars
}

/// Every link and image target in the page, with its line: `[text](target)`,
/// `![alt](target)` (titles dropped, `<target>` unwrapped) and `[label]: target` definitions.
fn links(text: &str) -> Vec<(usize, String)> {
    let chars = prose(text);
    let mut found = Vec::new();
    for i in 0..chars.len() {
        if chars[i].0 != '[' {
            continue;
        }
        // The matching `]`, brackets nested, within the paragraph.
        let mut depth = 0usize;
        let mut end = None;
        for (j, &(c, _)) in chars.iter().enumerate().skip(i) {
            match c {
                '[' => depth += 1,
                ']' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(j);
                        break;
                    }
                }
                '\n' if chars.get(j + 1).is_some_and(|(c, _)| *c == '\n') => break,
                _ => {}
            }
        }
        let Some(end) = end else { continue };
        let target_from = match chars.get(end + 1) {
            Some(('(', _)) => end + 2,
            Some((':', _)) if chars[..i].last().is_none_or(|(c, _)| *c == '\n') => end + 2,
            _ => continue,
        };
        // The target: up to the closing parenthesis (balanced) or the line's end.
        let mut depth = 0usize;
        let mut target = String::new();
        for &(c, _) in &chars[target_from..] {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => break,
                ')' => depth -= 1,
                '\n' => break,
                _ => {}
            }
            target.push(c);
        }
        let target = target.trim();
        let target = match target.strip_prefix('<') {
            Some(rest) => rest.split('>').next().unwrap_or(""),
            None => target.split_whitespace().next().unwrap_or(""),
        };
        found.push((chars[i].1, target.to_string()));
    }
    found
}

/// The anchors a page offers: its headings' slugs (a repeated slug numbered `-1`, `-2`, …),
/// and any HTML `id="…"` or `name="…"`.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut set = BTreeSet::new();
    for line in without_fences(text) {
        let trimmed = line.trim_start();
        let level = trimmed.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&level)
            && line.len() - trimmed.len() <= 3
            && trimmed[level..].chars().next().is_none_or(|c| c == ' ')
        {
            let heading = trimmed[level..].trim().trim_end_matches('#').trim();
            // A link in a heading shows its text only.
            let mut plain = String::new();
            let mut rest = heading;
            while let Some(open) = rest.find("](") {
                plain.push_str(&rest[..open]);
                rest = &rest[open + 2..];
                rest = rest.find(')').map_or("", |close| &rest[close + 1..]);
            }
            plain.push_str(rest);
            let base = slug(&plain);
            let n = seen.entry(base.clone()).or_insert(0);
            set.insert(if *n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            });
            *n += 1;
        }
        for attr in ["id=\"", "name=\""] {
            let mut rest = line.as_str();
            while let Some(at) = rest.find(attr) {
                rest = &rest[at + attr.len()..];
                if let Some(close) = rest.find('"') {
                    set.insert(rest[..close].to_string());
                }
            }
        }
    }
    set
}

/// `%20` and the like, as GitHub decodes them in link targets.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ASCII hex digits");
            out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a/b/../c` as `a/c`, without touching the file system.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Every broken link of the given pages, as `page:line: target: why`.
fn broken_links(root: &Path, pages: &[PathBuf]) -> Vec<String> {
    let mut broken = Vec::new();
    let mut anchor_cache: HashMap<PathBuf, BTreeSet<String>> = HashMap::new();
    for page in pages {
        let text = std::fs::read_to_string(root.join(page))
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", page.display()));
        let folder = page.parent().unwrap_or(Path::new("")).to_path_buf();
        for (line, target) in links(&text) {
            let lower = target.to_ascii_lowercase();
            if lower.starts_with("http://")
                || lower.starts_with("https://")
                || lower.starts_with("mailto:")
            {
                continue;
            }
            let mut report = |why: String| {
                broken.push(format!("{}:{line}: ({target}): {why}", page.display()));
            };
            if target.is_empty() {
                report("empty target".into());
                continue;
            }
            let (path_part, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let path_part = path_part.split('?').next().unwrap_or("");
            let file = if path_part.is_empty() {
                page.clone()
            } else {
                let decoded = percent_decode(path_part);
                match decoded.strip_prefix('/') {
                    Some(from_root) => normalise(Path::new(from_root)),
                    None => normalise(&folder.join(decoded)),
                }
            };
            if !root.join(&file).exists() {
                report(format!("{} does not exist", file.display()));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if file.extension().is_none_or(|e| e != "md") {
                report(format!(
                    "an anchor into {}, which is not markdown",
                    file.display()
                ));
                continue;
            }
            let set = anchor_cache.entry(file.clone()).or_insert_with(|| {
                anchors(&std::fs::read_to_string(root.join(&file)).unwrap_or_default())
            });
            let anchor = percent_decode(anchor);
            if !set.contains(&anchor) {
                report(format!(
                    "no heading of {} has the anchor #{anchor}",
                    file.display()
                ));
            }
        }
    }
    broken
}

#[test]
fn every_link_resolves() {
    let root = root();
    let pages = pages();
    let checked: usize = pages
        .iter()
        .map(|p| links(&std::fs::read_to_string(root.join(p)).unwrap_or_default()).len())
        .sum();
    let broken = broken_links(&root, &pages);
    println!(
        "{checked} links in {} pages: {}",
        pages.len(),
        pages
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(checked > 0, "no links found: the extractor is broken");
    assert!(
        broken.is_empty(),
        "{} broken link(s):\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn readme_is_short() {
    let text = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let lines = text.lines().count();
    assert!(
        lines < 150,
        "README.md has {lines} lines; keep it under 150 (details belong in docs/)"
    );
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug("The toy world: pretraining and scoring"),
        "the-toy-world-pretraining-and-scoring"
    );
    assert_eq!(
        slug("Your own Stable Diffusion: single-file checkpoints and LoRAs"),
        "your-own-stable-diffusion-single-file-checkpoints-and-loras"
    );
    assert_eq!(slug("`tav batch`"), "tav-batch");
    assert_eq!(
        slug("Embedding: the `tav-web` package"),
        "embedding-the-tav-web-package"
    );
    assert_eq!(
        slug("Files written by other tools (`tests/fixtures/interop/`)"),
        "files-written-by-other-tools-testsfixturesinterop"
    );
    assert_eq!(slug("snake_case stays"), "snake_case-stays");
    assert_eq!(slug("Dashes — and  spaces"), "dashes--and--spaces");
}

#[test]
fn extraction_skips_code_and_numbers_duplicates() {
    let page = "See [a](a.md) and ![img](pic.png \"title\").\n\
                `[not](code.md)` and a span over\n\
                lines: `x [no](b.md)\n\
                y` then [yes](<c d.md>).\n\
                \n\
                ```sh\n\
                [fenced](e.md)\n\
                ```\n\
                [ref]: f.md\n\
                [outer ![inner](g.png)](h.md)\n";
    let got: Vec<(usize, String)> = links(page);
    let want: Vec<(usize, String)> = [
        (1, "a.md"),
        (1, "pic.png"),
        (4, "c d.md"),
        (9, "f.md"),
        (10, "h.md"),
        (10, "g.png"),
    ]
    .into_iter()
    .map(|(l, t)| (l, t.to_string()))
    .collect();
    assert_eq!(got, want);

    let set = anchors("# Title\n## Notes\n```\n# not a heading\n```\n## Notes\n## Notes\n");
    let want: BTreeSet<String> = ["title", "notes", "notes-1", "notes-2"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(set, want);
}

#[test]
fn a_broken_link_is_reported() {
    let dir = std::env::temp_dir().join(format!("tav-docs-test-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    std::fs::write(dir.join("docs/ok.md"), "# Heading here\n").unwrap();
    std::fs::write(
        dir.join("README.md"),
        "[fine](docs/ok.md#heading-here)\n[gone](docs/missing.md)\n\
         [bad anchor](docs/ok.md#nope)\n[web](https://example.com/x)\n",
    )
    .unwrap();
    let broken = broken_links(&dir, &[PathBuf::from("README.md")]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert!(broken[0].starts_with("README.md:2: (docs/missing.md)"));
    assert!(broken[1].starts_with("README.md:3: (docs/ok.md#nope)"));
}

/// A YAML node: the block-style subset the Kubernetes example uses (maps, sequences, plain,
/// quoted and flow-sequence scalars, comments).
#[derive(Debug, Clone, PartialEq)]
enum Yaml {
    Map(Vec<(String, Yaml)>),
    Seq(Vec<Yaml>),
    Scalar(String),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The node at a dotted path of map keys.
    fn at(&self, path: &str) -> Result<&Yaml, String> {
        path.split('.').try_fold(self, |node, key| {
            node.get(key).ok_or_else(|| format!("{path}: no `{key}`"))
        })
    }

    fn text(&self, path: &str) -> Result<String, String> {
        match self.at(path)? {
            Yaml::Scalar(s) if !s.is_empty() => Ok(s.clone()),
            other => Err(format!("{path} is not a value: {other:?}")),
        }
    }
}

/// Parses block YAML (two-space or other consistent indentation, no tabs, no anchors, no
/// multi-line scalars); an error names the line.
fn parse_yaml(text: &str) -> Result<Yaml, String> {
    let mut lines: Vec<(usize, usize, String)> = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        if raw.contains('\t') {
            return Err(format!("line {}: a tab", number + 1));
        }
        let content = strip_comment(raw);
        if content.trim().is_empty() {
            continue;
        }
        let indent = content.len() - content.trim_start().len();
        lines.push((number + 1, indent, content.trim().to_string()));
    }
    let mut at = 0;
    let node = parse_block(&mut lines, &mut at, 0)?;
    match lines.get(at) {
        Some((n, _, l)) => Err(format!(
            "line {n}: `{l}` is outside the document's structure"
        )),
        None => Ok(node),
    }
}

fn strip_comment(line: &str) -> String {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if i == 0 || line[..i].ends_with(' ') => return line[..i].to_string(),
            _ => {}
        }
    }
    line.to_string()
}

fn parse_block(
    lines: &mut Vec<(usize, usize, String)>,
    at: &mut usize,
    indent: usize,
) -> Result<Yaml, String> {
    let Some((_, first_indent, first)) = lines.get(*at).cloned() else {
        return Err("an empty block".into());
    };
    if first_indent != indent {
        return Err(format!(
            "line {}: indentation {first_indent}, expected {indent}",
            lines[*at].0
        ));
    }
    if first == "-" || first.starts_with("- ") {
        let mut items = Vec::new();
        while let Some((number, i, line)) = lines.get(*at).cloned() {
            if i != indent || !(line == "-" || line.starts_with("- ")) {
                break;
            }
            let rest = line[1..].trim_start().to_string();
            if rest.is_empty() {
                *at += 1;
                items.push(parse_block(
                    lines,
                    at,
                    lines.get(*at).map_or(indent + 2, |l| l.1),
                )?);
            } else if key_value(&rest).is_some() {
                // `- key: value`: a map whose first entry sits after the dash.
                lines[*at] = (number, indent + 2, rest);
                items.push(parse_block(lines, at, indent + 2)?);
            } else {
                items.push(scalar(&rest));
                *at += 1;
            }
        }
        return Ok(Yaml::Seq(items));
    }
    let mut entries = Vec::new();
    while let Some((number, i, line)) = lines.get(*at).cloned() {
        if i < indent {
            break;
        }
        if i > indent {
            return Err(format!("line {number}: unexpected indentation"));
        }
        let (key, value) = key_value(&line)
            .ok_or_else(|| format!("line {number}: `{line}` is not `key: value`"))?;
        *at += 1;
        let node = if value.is_empty() {
            match lines.get(*at) {
                Some((_, next, l))
                    if *next > indent || (*next == indent && l.starts_with("- ")) =>
                {
                    let next = *next;
                    parse_block(lines, at, next)?
                }
                _ => Yaml::Scalar(String::new()),
            }
        } else {
            scalar(&value)
        };
        if entries.iter().any(|(k, _)| *k == key) {
            return Err(format!("line {number}: `{key}` twice"));
        }
        entries.push((key, node));
    }
    Ok(Yaml::Map(entries))
}

/// `key: value` (value possibly empty), outside quotes.
fn key_value(line: &str) -> Option<(String, String)> {
    if line.starts_with(['"', '\'', '[']) {
        return None;
    }
    let colon = line
        .find(": ")
        .or_else(|| line.strip_suffix(':').map(|s| s.len()))?;
    let key = line[..colon].trim();
    if key.is_empty() || key.contains(' ') {
        return None;
    }
    Some((key.to_string(), line[colon + 1..].trim().to_string()))
}

fn scalar(text: &str) -> Yaml {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return Yaml::Seq(
            inner
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(scalar)
                .collect(),
        );
    }
    let unquoted = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .or_else(|| text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')))
        .unwrap_or(text);
    Yaml::Scalar(unquoted.to_string())
}

/// What a Kubernetes Indexed Job running `tav batch` needs (the Job schema's required fields
/// and the values that make it indexed), and that its shard count is its completions.
fn check_indexed_job(job: &Yaml) -> Result<(), String> {
    let expect = |path: &str, want: &[&str]| -> Result<(), String> {
        let got = job.text(path)?;
        if want.contains(&got.as_str()) {
            Ok(())
        } else {
            Err(format!("{path} is `{got}`, not {want:?}"))
        }
    };
    expect("apiVersion", &["batch/v1"])?;
    expect("kind", &["Job"])?;
    job.text("metadata.name")?;
    expect("spec.completionMode", &["Indexed"])?;
    let completions: usize = job
        .text("spec.completions")?
        .parse()
        .map_err(|_| "spec.completions is not a count".to_string())?;
    let parallelism: usize = job
        .text("spec.parallelism")?
        .parse()
        .map_err(|_| "spec.parallelism is not a count".to_string())?;
    if completions == 0 || parallelism == 0 || parallelism > completions {
        return Err(format!(
            "completions {completions}, parallelism {parallelism}"
        ));
    }
    // A Job's pods may not restart Always; per-index retries need Never.
    let policy = job.text("spec.template.spec.restartPolicy")?;
    let allowed: &[&str] = if job.at("spec.backoffLimitPerIndex").is_ok() {
        &["Never"]
    } else {
        &["Never", "OnFailure"]
    };
    expect("spec.template.spec.restartPolicy", allowed).map_err(|e| format!("{e} ({policy})"))?;
    let Yaml::Seq(containers) = job.at("spec.template.spec.containers")? else {
        return Err("spec.template.spec.containers is not a list".into());
    };
    if containers.is_empty() {
        return Err("no containers".into());
    }
    for (i, c) in containers.iter().enumerate() {
        c.text("name").map_err(|e| format!("containers[{i}].{e}"))?;
        c.text("image")
            .map_err(|e| format!("containers[{i}].{e}"))?;
    }
    let command: Vec<String> = containers
        .iter()
        .flat_map(|c| ["command", "args"].map(|k| c.get(k).cloned()))
        .flatten()
        .flat_map(|node| match node {
            Yaml::Seq(items) => items,
            other => vec![other],
        })
        .filter_map(|node| match node {
            Yaml::Scalar(s) => Some(s),
            _ => None,
        })
        .collect();
    let command = command.join(" ");
    for needed in [
        "tav batch".to_string(),
        "$JOB_COMPLETION_INDEX".to_string(),
        format!("--count {completions}"),
    ] {
        if !command.contains(&needed) {
            return Err(format!(
                "the container's command lacks `{needed}`: {command}"
            ));
        }
    }
    let gpu = containers
        .iter()
        .any(|c| c.at("resources.limits.nvidia.com/gpu").is_ok() || {
            matches!(c.at("resources.limits"), Ok(Yaml::Map(m)) if m.iter().any(|(k, _)| k == "nvidia.com/gpu"))
        });
    if !gpu {
        return Err("no container asks for a GPU (resources.limits: nvidia.com/gpu)".into());
    }
    Ok(())
}

#[test]
fn the_kubernetes_example_is_an_indexed_job_running_tav_batch() {
    let path = root().join("docs/scale-out/tav-batch-job.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let job = parse_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    check_indexed_job(&job).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // The check fails when the file breaks.
    for (from, to) in [
        ("completionMode: Indexed", "completionMode: NonIndexed"),
        ("--count 4 --json", "--count 3 --json"),
        ("restartPolicy: Never", "restartPolicy: Always"),
        ("  name: tav-batch", "  nom: tav-batch"),
        ("nvidia.com/gpu: 1", "cpu: 1"),
    ] {
        assert!(text.contains(from), "{from}");
        let broken = text.replacen(from, to, 1);
        let verdict = parse_yaml(&broken).and_then(|job| check_indexed_job(&job));
        assert!(verdict.is_err(), "`{from}` → `{to}` passed");
    }
    assert!(
        parse_yaml("a: 1\n   b: 2\n").is_err(),
        "bad indentation is refused"
    );
}
