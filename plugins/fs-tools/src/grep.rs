//! Grep: a regex search over files, built on the ripgrep crates (the
//! `ignore` walker, `grep-regex`, `grep-searcher`), with ripgrep's defaults:
//! .gitignore and .ignore honoured, hidden and binary files skipped.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use grep_regex::RegexMatcherBuilder;
use grep_searcher::{BinaryDetection, Searcher, SearcherBuilder, Sink, SinkContext, SinkMatch};
use ignore::overrides::OverrideBuilder;
use ignore::types::TypesBuilder;
use serde::Deserialize;
use yoi_plugin_sdk::{ToolError, ToolOutput, parse_input};
use yoi_scope_rules::{Access, Rules};

use crate::plural;
use crate::scope::{Context, io_error};
use crate::wasi_fs::OpenFile;

/// Files up to this size are read whole and searched in memory; larger
/// ones are streamed.
const WHOLE_FILE_MAX: u64 = 32 << 20;
/// Entries returned when the model gives no head_limit.
const DEFAULT_HEAD_LIMIT: usize = 250;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    pattern: String,
    path: Option<String>,
    glob: Option<String>,
    #[serde(rename = "type")]
    file_type: Option<String>,
    #[serde(default)]
    output_mode: Mode,
    #[serde(rename = "-i", default)]
    case_insensitive: bool,
    #[serde(rename = "-n")]
    line_numbers: Option<bool>,
    #[serde(rename = "-A")]
    after: Option<usize>,
    #[serde(rename = "-B")]
    before: Option<usize>,
    #[serde(rename = "-C")]
    context: Option<usize>,
    #[serde(default)]
    multiline: bool,
    head_limit: Option<usize>,
    #[serde(default)]
    offset: usize,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Mode {
    #[default]
    FilesWithMatches,
    Content,
    Count,
}

pub fn run(ctx: &Context, input: &str) -> Result<ToolOutput, ToolError> {
    let input: Input = parse_input(input)?;
    let root = ctx.resolve_dir_or_cwd(input.path.as_deref())?;
    let meta = std::fs::metadata(&root).map_err(|e| io_error(root.display(), e))?;
    let head_limit = input.head_limit.unwrap_or(DEFAULT_HEAD_LIMIT);
    if head_limit == 0 {
        return Err(ToolError::InvalidInput("head_limit must be at least 1".into()));
    }
    let matcher = RegexMatcherBuilder::new()
        .case_insensitive(input.case_insensitive)
        .multi_line(true)
        .dot_matches_new_line(input.multiline)
        .build(&input.pattern)
        .map_err(|e| ToolError::InvalidInput(format!("invalid regex: {e}")))?;
    let before = input.before.or(input.context).unwrap_or(0);
    let after = input.after.or(input.context).unwrap_or(0);
    let mut searcher = SearcherBuilder::new()
        .binary_detection(BinaryDetection::quit(0))
        .line_number(true)
        .multi_line(input.multiline)
        .before_context(before)
        .after_context(after)
        .build();
    let files = if meta.is_dir() { walk(&root, &input, Arc::new(ctx.rules.clone()))? } else { vec![root.clone()] };

    let context = input.output_mode == Mode::Content && before + after > 0;
    let mut results = Results::new(input.output_mode, context, input.offset, head_limit);
    for file in files {
        let mut sink = FileSink::new(&file, input.output_mode, input.line_numbers.unwrap_or(true));
        let searched = match OpenFile::open(&file) {
            // Small files are read whole through the fast descriptor path.
            Ok(open) if open.size <= WHOLE_FILE_MAX => {
                open.read_all().and_then(|bytes| searcher.search_slice(&matcher, &bytes, &mut sink))
            }
            Ok(_) => searcher.search_path(&matcher, &file, &mut sink),
            Err(e) => Err(e),
        };
        if let Err(e) = searched {
            // An unreadable file is skipped, as ripgrep does; say so in the log.
            yoi_plugin_sdk::log::log(yoi_plugin_sdk::log::Level::Debug, &format!("{}: {e}", file.display()));
            continue;
        }
        if sink.binary || sink.matched_lines == 0 {
            continue;
        }
        if !results.add(sink) {
            break;
        }
    }
    Ok(results.finish(&input.pattern, &root))
}

/// The files under `root` to search, in path order, within the pod's rules
/// and the model's glob and type filters.
fn walk(root: &Path, input: &Input, rules: Arc<Rules>) -> Result<Vec<PathBuf>, ToolError> {
    let mut builder = ignore::WalkBuilder::new(root);
    builder.require_git(false).follow_links(false).sort_by_file_name(|a, b| a.cmp(b));
    if let Some(glob) = &input.glob {
        let mut overrides = OverrideBuilder::new(root);
        overrides.add(glob).map_err(|e| ToolError::InvalidInput(format!("invalid glob {glob:?}: {e}")))?;
        builder.overrides(overrides.build().map_err(|e| ToolError::InvalidInput(format!("invalid glob: {e}")))?);
    }
    if let Some(file_type) = &input.file_type {
        let mut types = TypesBuilder::new();
        types.add_defaults();
        types.select(file_type);
        let types = types.build().map_err(|e| {
            ToolError::InvalidInput(format!(
                "unknown file type {file_type:?}: {e} (try rs, py, js, ts, go, java, c, md)"
            ))
        })?;
        builder.types(types);
    }
    // Hidden files stay out even when a type or glob filter selects them.
    let filter_rules = rules.clone();
    builder.filter_entry(move |e| !is_hidden(e) && worth_visiting(&filter_rules, e));
    let mut files = Vec::new();
    for entry in builder.build() {
        let Ok(entry) = entry else { continue };
        if entry.file_type().is_some_and(|t| t.is_file()) && rules.access(entry.path()) >= Access::Read {
            files.push(entry.into_path());
        }
    }
    Ok(files)
}

/// Walks do not enter directories in which the pod's rules leave nothing
/// readable (deny rules, the depth limit of non-recursive rules).
fn worth_visiting(rules: &Rules, entry: &ignore::DirEntry) -> bool {
    !entry.file_type().is_some_and(|t| t.is_dir()) || rules.worth_entering(entry.path())
}

fn is_hidden(entry: &ignore::DirEntry) -> bool {
    entry.depth() > 0 && entry.file_name().to_string_lossy().starts_with('.')
}

/// What one file produced.
struct FileSink {
    path: String,
    mode: Mode,
    line_numbers: bool,
    lines: Vec<String>,
    matched_lines: usize,
    binary: bool,
}

impl FileSink {
    fn new(path: &Path, mode: Mode, line_numbers: bool) -> FileSink {
        FileSink {
            path: path.display().to_string(),
            mode,
            line_numbers,
            lines: Vec::new(),
            matched_lines: 0,
            binary: false,
        }
    }

    fn push(&mut self, sep: char, first_line: Option<u64>, bytes: &[u8]) {
        for (i, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
            let text = String::from_utf8_lossy(line);
            let text = text.trim_end_matches(['\n', '\r']);
            match (self.line_numbers, first_line) {
                (true, Some(n)) => self.lines.push(format!("{}{sep}{}{sep}{text}", self.path, n + i as u64)),
                _ => self.lines.push(format!("{}{sep}{text}", self.path)),
            }
        }
    }
}

impl Sink for FileSink {
    type Error = io::Error;

    fn matched(&mut self, _: &Searcher, m: &SinkMatch<'_>) -> Result<bool, io::Error> {
        self.matched_lines += m.lines().count();
        match self.mode {
            Mode::Content => self.push(':', m.line_number(), m.bytes()),
            // One match is enough to list the file.
            Mode::FilesWithMatches => return Ok(false),
            Mode::Count => {}
        }
        Ok(true)
    }

    fn context(&mut self, _: &Searcher, c: &SinkContext<'_>) -> Result<bool, io::Error> {
        if self.mode == Mode::Content {
            self.push('-', c.line_number(), c.bytes());
        }
        Ok(true)
    }

    fn context_break(&mut self, _: &Searcher) -> Result<bool, io::Error> {
        if self.mode == Mode::Content {
            self.lines.push("--".to_string());
        }
        Ok(true)
    }

    fn binary_data(&mut self, _: &Searcher, _offset: u64) -> Result<bool, io::Error> {
        self.binary = true;
        Ok(false)
    }
}

/// Entries gathered so far, paginated by offset and head_limit.
struct Results {
    mode: Mode,
    /// Whether context lines are shown (content mode with -A/-B/-C).
    context: bool,
    offset: usize,
    head_limit: usize,
    /// Files with matches and their modification times (files mode).
    files: Vec<(SystemTime, String)>,
    /// Output lines (content and count modes), stopping one past the page.
    entries: Vec<String>,
    matched_files: usize,
    matched_lines: usize,
    stopped_early: bool,
}

impl Results {
    fn new(mode: Mode, context: bool, offset: usize, head_limit: usize) -> Results {
        Results {
            mode,
            context,
            offset,
            head_limit,
            files: Vec::new(),
            entries: Vec::new(),
            matched_files: 0,
            matched_lines: 0,
            stopped_early: false,
        }
    }

    /// Adds one file's results; false once the page is full and one more
    /// entry is known to exist.
    fn add(&mut self, sink: FileSink) -> bool {
        self.matched_files += 1;
        self.matched_lines += sink.matched_lines;
        match self.mode {
            Mode::FilesWithMatches => {
                let mtime = std::fs::metadata(&sink.path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
                self.files.push((mtime, sink.path));
            }
            Mode::Content => {
                // Context groups of different files are set apart, as in ripgrep.
                if self.context && !self.entries.is_empty() {
                    self.entries.push("--".to_string());
                }
                self.entries.extend(sink.lines);
            }
            Mode::Count => self.entries.push(format!("{}:{}", sink.path, sink.matched_lines)),
        }
        if self.mode != Mode::FilesWithMatches && self.entries.len() > self.offset + self.head_limit {
            self.stopped_early = true;
            return false;
        }
        true
    }

    fn finish(mut self, pattern: &str, root: &Path) -> ToolOutput {
        if self.mode == Mode::FilesWithMatches {
            self.files.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            self.entries = self.files.drain(..).map(|(_, p)| p).collect();
        }
        let available = self.entries.len();
        let page: Vec<String> = self.entries.into_iter().skip(self.offset).take(self.head_limit).collect();
        let more = self.stopped_early || self.offset + page.len() < available;
        let found = match self.mode {
            Mode::FilesWithMatches => plural(self.matched_files, "file"),
            Mode::Content | Mode::Count => {
                let at_least = if self.stopped_early { "at least " } else { "" };
                let lines = plural(self.matched_lines, "matching line");
                format!("{at_least}{lines} in {}", plural(self.matched_files, "file"))
            }
        };
        let mut summary = format!("Found {found} for /{pattern}/ in {}", root.display());
        if self.offset > 0 || more {
            summary.push_str(&format!("; showing entries {}..{}", self.offset + 1, self.offset + page.len()));
        }
        if more {
            summary.push_str(&format!(" (cut: pass offset={} for more)", self.offset + page.len()));
        }
        ToolOutput { summary, content: (!page.is_empty()).then(|| page.join("\n")) }
    }
}
