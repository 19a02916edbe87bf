//! CONFIGURATION
//!
//! A config is the whole app graph: apps by name with their class and
//! arguments, and links between their ports, each with optional settings.
//! It is written in RON:
//!
//! ```ron
//! (
//!     apps: {
//!         "source": (class: "Source", args: (size: 60)),
//!         "sink":   (class: "Sink", worker: "w1"),
//!     },
//!     links: [
//!         "source.output -> sink.input",
//!         (link: "source.copy -> sink.copy", copy: Simd, size: 4096),
//!     ],
//!     workers: { "w1": (cpu: 1) },
//! )
//! ```
//!
//! An app with a `worker` runs on that worker (a thread of its own, pinned
//! to the worker's CPU when it has one); the others run on the main one.
//! A link whose ends are on different workers is an interlink (see
//! `worker`); the config does not say so.
//!
//! Arguments stay as RON text until the app's class parses them into its own
//! type, so an error in them still points at the right line and column of
//! the file. Programs build configs in code with [`Config::app`] and
//! [`Config::link`]; both kinds go through the same checks.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use ron::value::RawValue;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::link::{self, CopyMode};

/// The worker of apps placed on none.
pub const MAIN: &str = "main";

/// A position in a config file (1-based).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// What is wrong with a config, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<String>,
    pub pos: Option<Pos>,
    pub msg: String,
}

impl ConfigError {
    pub fn new(msg: impl Into<String>) -> ConfigError {
        ConfigError { file: None, pos: None, msg: msg.into() }
    }
    fn at(origin: &Origin, pos: Option<Pos>, msg: impl Into<String>) -> ConfigError {
        ConfigError { file: origin.file.clone(), pos, msg: msg.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.pos) {
            (Some(file), Some(p)) => write!(f, "{file}:{}:{}: {}", p.line, p.col, self.msg),
            (Some(file), None) => write!(f, "{file}: {}", self.msg),
            (None, Some(p)) => write!(f, "line {}, column {}: {}", p.line, p.col, self.msg),
            (None, None) => f.write_str(&self.msg),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where a piece of config came from: a file (with its text, to turn byte
/// offsets into lines and columns) or code.
#[derive(Clone, Debug, Default)]
struct Origin {
    file: Option<String>,
    text: std::rc::Rc<str>,
}

impl Origin {
    fn pos_of(&self, offset: usize) -> Pos {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        Pos { line, col }
    }
}

/// RON as configs are read: `Option` fields take plain values (`count: 5`,
/// not `count: Some(5)`), and newtypes need no wrapper.
pub fn ron_options() -> ron::Options {
    ron::Options::default()
        .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
        .with_default_extension(ron::extensions::Extensions::UNWRAP_NEWTYPES)
}

/// An app's arguments: RON text, parsed on demand by the app's class.
#[derive(Clone, Debug)]
pub struct Args {
    text: String,
    /// Position of the text's first byte in its file, if it came from one.
    pos: Option<Pos>,
    /// The text is not in the file (an app given no `args`): errors point
    /// at `pos` itself, the app's name.
    absent: bool,
    origin: Origin,
    /// The parsed value, for comparing configs.
    value: ron::Value,
}

impl Args {
    /// Arguments from RON text.
    pub fn from_ron(text: &str) -> Result<Args, ConfigError> {
        let value = ron_options().from_str(text).map_err(|e| ConfigError::new(format!("arguments `{text}`: {e}")))?;
        Ok(Args { text: text.to_string(), pos: None, absent: false, origin: Origin::default(), value })
    }

    /// Arguments serialised from a value (for configs built in code).
    pub fn from_value<T: Serialize>(v: &T) -> Result<Args, ConfigError> {
        let text = ron::to_string(v).map_err(|e| ConfigError::new(format!("arguments: {e}")))?;
        Args::from_ron(&text)
    }

    /// No arguments: `()`.
    pub fn unit() -> Args {
        Args::from_ron("()").unwrap()
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Parse into an app's argument type; errors point into the file.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        ron_options().from_str(&self.text).map_err(|e| {
            let pos = self.pos.map(|base| {
                let p = e.span.start;
                if self.absent {
                    base
                } else if p.line <= 1 {
                    Pos { line: base.line, col: base.col + p.col.saturating_sub(1) }
                } else {
                    Pos { line: base.line + p.line - 1, col: p.col }
                }
            });
            let mut msg = e.code.to_string();
            if self.absent {
                msg += " (no `args` given)";
            }
            ConfigError::at(&self.origin, pos, msg)
        })
    }

    /// An error about these arguments as a whole (a check across fields),
    /// placed where they start in the file.
    pub fn error(&self, msg: impl Into<String>) -> ConfigError {
        ConfigError::at(&self.origin, self.pos, msg)
    }
}

impl PartialEq for Args {
    fn eq(&self, other: &Args) -> bool {
        self.value == other.value
    }
}

/// One app in a config.
#[derive(Clone, Debug)]
pub struct AppSpec {
    pub class: String,
    pub args: Args,
    /// The worker the app runs on (None: the main one).
    pub worker: Option<String>,
    pos: Option<Pos>,
}

impl PartialEq for AppSpec {
    fn eq(&self, other: &AppSpec) -> bool {
        self.class == other.class && self.args == other.args && self.worker == other.worker
    }
}

/// A worker: a thread of its own, pinned to `cpu` when given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSpec {
    #[serde(default)]
    pub cpu: Option<usize>,
}

/// One end of a link: `app.port`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub app: String,
    pub port: String,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.app, self.port)
    }
}

/// A link `from.port -> to.port`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkSpec {
    pub from: Endpoint,
    pub to: Endpoint,
}

impl fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.from, self.to)
    }
}

/// Names of apps and ports: letters, digits, `_` and `-`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl FromStr for LinkSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<LinkSpec, String> {
        let bad = || format!("link `{s}`: expected `app.port -> app.port`");
        let (a, b) = s.split_once("->").ok_or_else(bad)?;
        let end = |t: &str| -> Result<Endpoint, String> {
            let (app, port) = t.trim().split_once('.').ok_or_else(bad)?;
            for n in [app, port] {
                if !valid_name(n) {
                    return Err(format!("link `{s}`: `{n}` is not a name (letters, digits, `_`, `-`)"));
                }
            }
            Ok(Endpoint { app: app.to_string(), port: port.to_string() })
        };
        Ok(LinkSpec { from: end(a)?, to: end(b)? })
    }
}

/// Per-link settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkSettings {
    pub copy: CopyMode,
    /// Ring slots; a power of two.
    pub size: usize,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings { copy: CopyMode::Zero, size: link::DEFAULT_SIZE }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct LinkEntry {
    settings: LinkSettings,
    pos: Option<Pos>,
}

/// The app graph.
#[derive(Clone, Debug, Default)]
pub struct Config {
    apps: BTreeMap<String, AppSpec>,
    links: BTreeMap<LinkSpec, LinkEntry>,
    workers: BTreeMap<String, WorkerSpec>,
    origin: Origin,
    /// Errors met while building in code, reported by `validate`.
    deferred: Vec<ConfigError>,
}

impl PartialEq for Config {
    fn eq(&self, other: &Config) -> bool {
        self.apps == other.apps
            && self.workers == other.workers
            && self.links.len() == other.links.len()
            && self.links.iter().zip(&other.links).all(|(a, b)| a.0 == b.0 && a.1.settings == b.1.settings)
    }
}

impl Config {
    pub fn new() -> Config {
        Config::default()
    }

    /// Add an app whose arguments are serialised from `args`.
    pub fn app<T: Serialize>(&mut self, name: &str, class: &str, args: &T) -> &mut Config {
        match Args::from_value(args) {
            Ok(a) => self.app_args(name, class, a),
            Err(e) => {
                self.deferred.push(ConfigError::new(format!("app `{name}`: {}", e.msg)));
                self
            }
        }
    }

    /// Add an app with arguments already in hand.
    pub fn app_args(&mut self, name: &str, class: &str, args: Args) -> &mut Config {
        if !valid_name(name) {
            self.deferred.push(ConfigError::new(format!("app name `{name}`: letters, digits, `_`, `-` only")));
        } else if self.apps.contains_key(name) {
            self.deferred.push(ConfigError::new(format!("app `{name}` defined twice")));
        }
        self.apps.insert(name.to_string(), AppSpec { class: class.to_string(), args, worker: None, pos: None });
        self
    }

    /// Declare a worker (or change its CPU).
    pub fn worker(&mut self, name: &str, spec: WorkerSpec) -> &mut Config {
        if !valid_name(name) || name == MAIN {
            self.deferred
                .push(ConfigError::new(format!("worker name `{name}`: letters, digits, `_`, `-`, not `main`")));
        }
        self.workers.insert(name.to_string(), spec);
        self
    }

    /// Place app `app` (added already) on worker `worker` (None: main).
    pub fn place(&mut self, app: &str, worker: Option<&str>) -> &mut Config {
        match self.apps.get_mut(app) {
            Some(a) => a.worker = worker.map(str::to_string),
            None => self.deferred.push(ConfigError::new(format!("place: no app named `{app}`"))),
        }
        self
    }

    pub fn workers(&self) -> impl Iterator<Item = (&str, &WorkerSpec)> {
        self.workers.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The worker app `name` runs on (`main` when it has none).
    pub fn worker_of(&self, name: &str) -> &str {
        self.apps.get(name).and_then(|a| a.worker.as_deref()).unwrap_or(MAIN)
    }

    /// Remove every app, link and worker not wanted by `keep`; the origin
    /// (for error positions) stays.
    pub(crate) fn retain(&mut self, apps: impl Fn(&str, &AppSpec) -> bool) {
        self.apps.retain(|k, v| apps(k, v));
        let apps = &self.apps;
        self.links.retain(|k, _| apps.contains_key(&k.from.app) && apps.contains_key(&k.to.app));
    }

    /// Drop the placement of every app, and the workers.
    pub(crate) fn unplace(&mut self) {
        for a in self.apps.values_mut() {
            a.worker = None;
        }
        self.workers.clear();
    }

    /// The settings of link `spec`, when it exists.
    pub fn link_settings(&self, spec: &LinkSpec) -> Option<LinkSettings> {
        self.links.get(spec).map(|e| e.settings)
    }

    /// Add a link `"a.out -> b.in"` with default settings.
    pub fn link(&mut self, spec: &str) -> &mut Config {
        self.link_with(spec, LinkSettings::default())
    }

    pub fn link_with(&mut self, spec: &str, settings: LinkSettings) -> &mut Config {
        match spec.parse::<LinkSpec>() {
            Ok(s) => {
                if self.links.insert(s, LinkEntry { settings, pos: None }).is_some() {
                    self.deferred.push(ConfigError::new(format!("link `{spec}` listed twice")));
                }
            }
            Err(e) => self.deferred.push(ConfigError::new(e)),
        }
        self
    }

    pub fn apps(&self) -> impl Iterator<Item = (&str, &AppSpec)> {
        self.apps.iter().map(|(k, v)| (k.as_str(), v))
    }
    pub fn app_spec(&self, name: &str) -> Option<&AppSpec> {
        self.apps.get(name)
    }
    pub fn links(&self) -> impl Iterator<Item = (&LinkSpec, LinkSettings)> {
        self.links.iter().map(|(k, v)| (k, v.settings))
    }
    pub fn file(&self) -> Option<&str> {
        self.origin.file.as_deref()
    }

    /// An error about app `name`, placed at its definition when known.
    pub fn app_error(&self, name: &str, msg: impl Into<String>) -> ConfigError {
        let pos = self.apps.get(name).and_then(|a| a.pos);
        ConfigError::at(&self.origin, pos, msg)
    }

    /// An error about link `spec`, placed at its entry when known.
    pub fn link_error(&self, spec: &LinkSpec, msg: impl Into<String>) -> ConfigError {
        let pos = self.links.get(spec).and_then(|l| l.pos);
        ConfigError::at(&self.origin, pos, msg)
    }

    /// Read and parse a RON config file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.display().to_string()),
            pos: None,
            msg: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, Some(&path.display().to_string()))
    }

    /// Parse RON text; `file` names it in errors.
    pub fn parse(text: &str, file: Option<&str>) -> Result<Config, ConfigError> {
        let origin = Origin { file: file.map(str::to_string), text: text.into() };
        let raw: FileConfig = ron_options().from_str(text).map_err(|e| {
            ConfigError::at(&origin, Some(Pos { line: e.span.start.line, col: e.span.start.col }), e.code.to_string())
        })?;
        let offset = |s: &str| s.as_ptr() as usize - text.as_ptr() as usize;
        let mut c = Config { origin: origin.clone(), ..Config::default() };
        for (name, app) in raw.apps.0 {
            let name_pos = origin.pos_of(offset(name) - 1);
            if !valid_name(name) {
                return Err(ConfigError::at(
                    &origin,
                    Some(name_pos),
                    format!("app name `{name}`: letters, digits, `_`, `-` only"),
                ));
            }
            let args = match app.args {
                Some(raw) => Args {
                    text: raw.get_ron().to_string(),
                    pos: Some(origin.pos_of(offset(raw.get_ron()))),
                    absent: false,
                    origin: origin.clone(),
                    value: ron_options().from_str(raw.get_ron()).map_err(|e| {
                        ConfigError::at(&origin, Some(origin.pos_of(offset(raw.get_ron()))), e.code.to_string())
                    })?,
                },
                None => Args { origin: origin.clone(), pos: Some(name_pos), absent: true, ..Args::unit() },
            };
            c.apps
                .insert(name.to_string(), AppSpec { class: app.class, args, worker: app.worker, pos: Some(name_pos) });
        }
        for l in raw.links {
            // The spec borrows from the text: its address gives its place
            // (one byte back for the opening quote).
            let pos = Some(origin.pos_of(offset(l.spec).saturating_sub(1)));
            let spec: LinkSpec = l.spec.parse().map_err(|e: String| ConfigError::at(&origin, pos, e))?;
            if c.links.contains_key(&spec) {
                return Err(ConfigError::at(&origin, pos, format!("link `{spec}` listed twice")));
            }
            c.links.insert(spec, LinkEntry { settings: l.settings, pos });
        }
        c.workers = raw.workers;
        c.validate()?;
        Ok(c)
    }

    /// Check the graph's shape: links name apps that exist, each port is
    /// used by one link only, ring sizes are powers of two.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(e) = self.deferred.first() {
            return Err(e.clone());
        }
        for name in self.workers.keys() {
            if !valid_name(name) || name == MAIN {
                return Err(ConfigError::at(
                    &self.origin,
                    None,
                    format!("worker name `{name}`: letters, digits, `_`, `-`, not `main`"),
                ));
            }
        }
        for (name, a) in &self.apps {
            if let Some(w) = &a.worker
                && !self.workers.contains_key(w)
            {
                let known: Vec<&str> = self.workers.keys().map(String::as_str).collect();
                return Err(ConfigError::at(
                    &self.origin,
                    a.pos,
                    format!("app `{name}`: no worker named `{w}` (workers: {})", known.join(", ")),
                ));
            }
        }
        let mut outs: BTreeMap<&Endpoint, &LinkSpec> = BTreeMap::new();
        let mut ins: BTreeMap<&Endpoint, &LinkSpec> = BTreeMap::new();
        for (spec, entry) in &self.links {
            let err = |msg: String| ConfigError::at(&self.origin, entry.pos, msg);
            for end in [&spec.from, &spec.to] {
                if !self.apps.contains_key(&end.app) {
                    return Err(err(format!("link `{spec}`: no app named `{}`", end.app)));
                }
            }
            if !link::valid_size(entry.settings.size) {
                return Err(err(format!(
                    "link `{spec}`: size {} must be a power of two from 2 to {}",
                    entry.settings.size,
                    link::MAX_SIZE
                )));
            }
            if let Some(other) = outs.insert(&spec.from, spec) {
                return Err(err(format!("output port `{}` is used by `{other}` and `{spec}`", spec.from)));
            }
            if let Some(other) = ins.insert(&spec.to, spec) {
                return Err(err(format!("input port `{}` is used by `{other}` and `{spec}`", spec.to)));
            }
        }
        Ok(())
    }

    /// The graph as RON (what `config check` prints).
    pub fn to_ron(&self) -> String {
        let mut s = String::from("(\n    apps: {\n");
        for (name, a) in &self.apps {
            let worker = a.worker.as_ref().map(|w| format!(", worker: {w:?}")).unwrap_or_default();
            if a.args.value == ron::Value::Unit {
                s += &format!("        {name:?}: (class: {:?}{worker}),\n", a.class);
            } else {
                s += &format!("        {name:?}: (class: {:?}, args: {}{worker}),\n", a.class, a.args.text);
            }
        }
        s += "    },\n    links: [\n";
        for (spec, e) in &self.links {
            if e.settings == LinkSettings::default() {
                s += &format!("        \"{spec}\",\n");
            } else {
                s += &format!("        (link: \"{spec}\", copy: {:?}, size: {}),\n", e.settings.copy, e.settings.size);
            }
        }
        s += "    ],\n";
        if !self.workers.is_empty() {
            s += "    workers: {\n";
            for (name, w) in &self.workers {
                match w.cpu {
                    Some(c) => s += &format!("        {name:?}: (cpu: {c}),\n"),
                    None => s += &format!("        {name:?}: (),\n"),
                }
            }
            s += "    },\n";
        }
        s += ")\n";
        s
    }
}

// ---------------------------------------------------------------------------
// The file format, as serde sees it.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig<'a> {
    #[serde(borrow, default)]
    apps: AppMap<'a>,
    #[serde(borrow, default)]
    links: Vec<FileLink<'a>>,
    #[serde(default)]
    workers: BTreeMap<String, WorkerSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApp<'a> {
    class: String,
    #[serde(borrow, default, deserialize_with = "some_raw")]
    args: Option<&'a RawValue>,
    #[serde(default)]
    worker: Option<String>,
}

fn some_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The apps map, in file order, refusing a name given twice.
#[derive(Default)]
struct AppMap<'a>(Vec<(&'a str, FileApp<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for AppMap<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = AppMap<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of app names to (class: \"...\", args: ...)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<AppMap<'a>, A::Error> {
                let mut v: Vec<(&'a str, FileApp<'a>)> = Vec::new();
                while let Some(name) = m.next_key::<&'de str>()? {
                    if v.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!("app `{name}` defined twice")));
                    }
                    v.push((name, m.next_value()?));
                }
                Ok(AppMap(v))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A link entry: `"a.x -> b.y"` or `(link: "a.x -> b.y", copy: Simd, size: 2048)`.
struct FileLink<'a> {
    spec: &'a str,
    settings: LinkSettings,
}

impl<'de: 'a, 'a> Deserialize<'de> for FileLink<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = FileLink<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a link: \"app.port -> app.port\" or (link: \"...\", copy: Zero|Simd, size: N)")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<FileLink<'a>, E> {
                s.parse::<LinkSpec>().map_err(E::custom)?;
                Ok(FileLink { spec: s, settings: LinkSettings::default() })
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<FileLink<'a>, E> {
                Err(E::custom(format!("link `{s}`: escapes are not allowed in link names")))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<FileLink<'a>, A::Error> {
                let mut spec = None;
                let mut settings = LinkSettings::default();
                while let Some(k) = m.next_key::<&'de str>()? {
                    match k {
                        "link" => {
                            let s: &'de str = m.next_value()?;
                            s.parse::<LinkSpec>().map_err(de::Error::custom)?;
                            spec = Some(s);
                        }
                        "copy" => settings.copy = m.next_value()?,
                        "size" => settings.size = m.next_value()?,
                        other => {
                            return Err(de::Error::custom(format!(
                                "link setting `{other}`: expected `link`, `copy` or `size`"
                            )));
                        }
                    }
                }
                let spec = spec.ok_or_else(|| de::Error::custom("link settings without `link: \"a.x -> b.y\"`"))?;
                Ok(FileLink { spec, settings })
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"(
    apps: {
        "src": (class: "Source", args: (size: 60)),
        "sink": (class: "Sink"),
    },
    links: [
        "src.output -> sink.input",
        (link: "src.b -> sink.b", copy: Simd, size: 2048),
    ],
)"#;

    #[test]
    fn parses_apps_and_links() {
        let c = Config::parse(GOOD, Some("good.ron")).unwrap();
        assert_eq!(c.apps().count(), 2);
        assert_eq!(c.app_spec("src").unwrap().class, "Source");
        let links: Vec<_> = c.links().collect();
        assert_eq!(links[0].0.to_string(), "src.b -> sink.b");
        assert_eq!(links[0].1, LinkSettings { copy: CopyMode::Simd, size: 2048 });
        assert_eq!(links[1].1, LinkSettings::default());
        // Printing and re-reading gives the same graph.
        let again = Config::parse(&c.to_ron(), None).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn code_and_file_configs_compare_equal() {
        #[derive(Serialize)]
        struct SourceArgs {
            size: u32,
        }
        let mut c = Config::new();
        c.app("src", "Source", &SourceArgs { size: 60 })
            .app("sink", "Sink", &())
            .link("src.output -> sink.input")
            .link_with("src.b -> sink.b", LinkSettings { copy: CopyMode::Simd, size: 2048 });
        c.validate().unwrap();
        assert_eq!(c, Config::parse(GOOD, None).unwrap());
    }

    fn err(text: &str) -> String {
        Config::parse(text, Some("t.ron")).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_file_line_and_column() {
        assert_eq!(
            err("(apps: {\n  \"a\": (class: \"X\"),\n  \"b\": (class: \"Y\"),\n},\nlinks: [\"a.o -> c.i\"])"),
            "t.ron:5:9: link `a.o -> c.i`: no app named `c`"
        );
        let e = err("(apps: {\n  \"a\": (klass: \"X\"),\n})");
        assert!(e.starts_with("t.ron:2:"), "{e}");
        assert!(e.contains("klass"), "{e}");
        let e = err("(apps: {}, links: [\"a.o - b.i\"])");
        assert!(e.starts_with("t.ron:1:") && e.contains("expected `app.port -> app.port`"), "{e}");
        let e = err("(apps: {\"a\": (class: \"X\"), \"a\": (class: \"Y\")})");
        assert!(e.contains("`a` defined twice"), "{e}");
        let e = err("(apps: {\"a\": (class: \"X\")}, links: [(link: \"a.o -> a.i\", size: 1000)])");
        assert!(e.contains("power of two"), "{e}");
        let e = err("(apps: {\"a\": (class: \"X\")}, links: [\"a.o -> a.i\", \"a.o -> a.j\"])");
        assert!(e.contains("output port `a.o` is used by"), "{e}");
        let e = err("(apps: {\"a\": (class: \"X\")}, links: [(link: \"a.o -> a.i\", copy: Fast)])");
        assert!(e.contains("Fast"), "{e}");
        let e = err("(apps: {\"a b\": (class: \"X\")})");
        assert!(e.starts_with("t.ron:1:9:") && e.contains("name"), "{e}");
    }

    #[test]
    fn args_errors_point_into_the_file() {
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct A {
            size: u32,
        }
        let text = "(apps: {\n  \"src\": (class: \"Source\", args: (\n      sizee: 5)),\n})";
        let c = Config::parse(text, Some("t.ron")).unwrap();
        let e = c.app_spec("src").unwrap().args.parse::<A>().unwrap_err().to_string();
        assert!(e.starts_with("t.ron:3:7: "), "{e}");
        assert!(e.contains("sizee"), "{e}");
        let text = "(apps: { \"src\": (class: \"Source\", args: (size: \"x\")) })";
        let e = Config::parse(text, Some("t.ron")).unwrap().app_spec("src").unwrap().args.parse::<A>().unwrap_err();
        assert_eq!(e.pos.unwrap().line, 1);
        assert!(e.pos.unwrap().col > 40, "{e}");
    }

    #[test]
    fn workers_and_placement() {
        let text = "(apps: {\"a\": (class: \"X\", worker: \"w1\"), \"b\": (class: \"Y\")},\n links: [\"a.o -> b.i\"],\n workers: {\"w1\": (cpu: 1), \"w2\": ()})";
        let c = Config::parse(text, None).unwrap();
        assert_eq!(c.worker_of("a"), "w1");
        assert_eq!(c.worker_of("b"), MAIN);
        assert_eq!(c.workers().count(), 2);
        assert_eq!(Config::parse(&c.to_ron(), None).unwrap(), c);
        let e = err("(apps: {\"a\": (class: \"X\", worker: \"w9\")}, workers: {\"w1\": ()})");
        assert!(e.contains("no worker named `w9`"), "{e}");
        let e = err("(apps: {}, workers: {\"main\": ()})");
        assert!(e.contains("not `main`"), "{e}");
    }

    #[test]
    fn link_spec_round_trip() {
        let s: LinkSpec = " a.out->b.in ".parse().unwrap();
        assert_eq!(s.to_string(), "a.out -> b.in");
        assert!("a -> b.c".parse::<LinkSpec>().is_err());
        assert!("a.b -> c.d -> e.f".parse::<LinkSpec>().is_err());
    }
}
