//! `snabb-rs top [PID]`: live per-link rates and app counters of a running
//! snabb-rs process, read from its counters in shared memory.
//!
//! With `--once` it samples twice, `--interval` apart, prints a plain table
//! (or JSON with `--json`, or Prometheus text with `--prometheus`) and
//! exits, for scripts. Otherwise, on a terminal, it is a terminal UI
//! refreshed every interval: Tab switches between the link and the app
//! counter panes, arrows, PgUp/PgDn, Home/End scroll, q or Esc quits.
//! Without a terminal (a pipe, cron, CI) it prints the plain table every
//! interval instead.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::stats::{self, Sample, app_rows, link_rows, program_name, sample};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    /// Aligned columns.
    Plain,
    /// One JSON object per sample.
    Json,
    /// Prometheus text exposition.
    Prometheus,
}

pub struct TopOptions {
    pub pid: Option<u32>,
    pub once: bool,
    pub interval: f64,
    pub format: Format,
    /// Samples to print without a terminal (or with --format) before exiting.
    pub count: Option<u64>,
}

fn render(format: Format, pid: u32, dir: &Path, a: &Sample, b: &Sample) -> String {
    match format {
        Format::Plain => stats::plain_table(pid, dir, a, b),
        Format::Json => stats::json(pid, dir, a, b).to_string() + "\n",
        Format::Prometheus => stats::prometheus(pid, &program_name(dir), &b.counters),
    }
}

pub fn top(o: TopOptions) -> Result<()> {
    let (pid, dir) = stats::find(o.pid)?;
    let interval = Duration::from_secs_f64(o.interval.max(0.05));
    if o.once {
        let a = sample(&dir)?;
        std::thread::sleep(interval);
        let b = sample(&dir)?;
        print!("{}", render(o.format, pid, &dir, &a, &b));
        return Ok(());
    }
    let tty = std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    if tty && o.format == Format::Plain && o.count.is_none() {
        match ratatui::try_init() {
            Ok(terminal) => return tui(terminal, pid, &dir, interval),
            Err(e) => log::warn!("no terminal UI ({e}): printing plain samples"),
        }
    }
    refreshed(&o, pid, &dir, interval)
}

/// The plain output, a sample every interval, until the process exits (or
/// `count` samples).
fn refreshed(o: &TopOptions, pid: u32, dir: &Path, interval: Duration) -> Result<()> {
    let mut prev = sample(dir)?;
    let mut n = 0;
    while o.count.is_none_or(|c| n < c) {
        std::thread::sleep(interval);
        if !dir.exists() {
            println!("snabb-rs process {pid} has exited");
            return Ok(());
        }
        let now = sample(dir)?;
        let mut out = render(o.format, pid, dir, &prev, &now);
        if o.format == Format::Plain {
            out.push('\n');
        }
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        match stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            r => r?,
        }
        prev = now;
        n += 1;
    }
    Ok(())
}

/// A pane's scroll position, kept within its rows.
#[derive(Default)]
struct Scroll {
    offset: usize,
}

impl Scroll {
    fn apply(&mut self, key: crossterm::event::KeyCode, page: usize, rows: usize) {
        use crossterm::event::KeyCode::*;
        let max = rows.saturating_sub(page.max(1));
        self.offset = match key {
            Up | Char('k') => self.offset.saturating_sub(1),
            Down | Char('j') => self.offset + 1,
            PageUp => self.offset.saturating_sub(page),
            PageDown | Char(' ') => self.offset + page,
            Home | Char('g') => 0,
            End | Char('G') => max,
            _ => self.offset,
        }
        .min(max);
    }
}

fn tui(mut terminal: ratatui::DefaultTerminal, pid: u32, dir: &Path, interval: Duration) -> Result<()> {
    use crossterm::event::{self, Event, KeyCode, KeyEventKind};
    use ratatui::layout::{Constraint, Layout};
    use ratatui::style::{Modifier, Style};
    use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};

    let result = (|| -> Result<()> {
        let mut prev = sample(dir)?;
        let mut now = prev.clone();
        let mut next = std::time::Instant::now() + interval;
        let (mut links_scroll, mut apps_scroll) = (Scroll::default(), Scroll::default());
        let mut on_apps = true;
        // Rows that fit in each pane (inside the borders, below the header).
        let (mut link_page, mut app_page) = (1usize, 1usize);
        loop {
            let wait = next.saturating_duration_since(std::time::Instant::now());
            if event::poll(wait)? {
                if let Event::Key(k) = event::read()? {
                    if k.kind != KeyEventKind::Press {
                        continue;
                    }
                    match k.code {
                        KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                        KeyCode::Tab | KeyCode::BackTab => on_apps = !on_apps,
                        code if on_apps => apps_scroll.apply(code, app_page, app_rows(&prev, &now).len()),
                        code => links_scroll.apply(code, link_page, link_rows(&prev, &now).len()),
                    }
                }
            } else {
                if !dir.exists() {
                    bail!("process {pid} has exited");
                }
                prev = std::mem::replace(&mut now, sample(dir)?);
                next = std::time::Instant::now() + interval;
            }
            let rows = link_rows(&prev, &now);
            let apps = app_rows(&prev, &now);
            let name = program_name(dir);
            let bold = Style::default().add_modifier(Modifier::BOLD);
            terminal.draw(|f| {
                let [head, links, app_area] =
                    Layout::vertical([Constraint::Length(1), Constraint::Percentage(40), Constraint::Min(5)])
                        .areas(f.area());
                link_page = links.height.saturating_sub(3) as usize;
                app_page = app_area.height.saturating_sub(3) as usize;
                links_scroll.offset = links_scroll.offset.min(rows.len().saturating_sub(link_page.max(1)));
                apps_scroll.offset = apps_scroll.offset.min(apps.len().saturating_sub(app_page.max(1)));
                f.render_widget(
                    Paragraph::new(format!(
                        "snabb-rs top: process {pid} ({name})   Tab: switch pane   ↑↓ PgUp PgDn Home End: scroll   q: quit"
                    )),
                    head,
                );
                let title = |what: &str, focused: bool, s: &Scroll, n: usize, page: usize| {
                    let shown = if n > page { format!(" {}-{} of {n}", s.offset + 1, (s.offset + page).min(n)) } else { String::new() };
                    format!("{}{what}{shown}", if focused { "▶ " } else { "" })
                };
                let body = rows.iter().skip(links_scroll.offset).map(|r| {
                    Row::new(vec![
                        Cell::from(r.link.clone()),
                        Cell::from(format!("{:.3}", r.mpps)),
                        Cell::from(format!("{:.3}", r.gbps)),
                        Cell::from(format!("{:.0}", r.drops_per_s)),
                        Cell::from(r.packets.to_string()),
                        Cell::from(r.drops.to_string()),
                    ])
                });
                let widths = [
                    Constraint::Min(30),
                    Constraint::Length(10),
                    Constraint::Length(10),
                    Constraint::Length(10),
                    Constraint::Length(16),
                    Constraint::Length(12),
                ];
                f.render_widget(
                    Table::new(body, widths)
                        .header(Row::new(["link", "Mpps", "Gbps", "drops/s", "packets", "drops"]).style(bold))
                        .block(Block::default().borders(Borders::ALL).title(title(
                            "links",
                            !on_apps,
                            &links_scroll,
                            rows.len(),
                            link_page,
                        ))),
                    links,
                );
                let app_lines = apps.iter().skip(apps_scroll.offset).map(|r| {
                    Row::new(vec![
                        Cell::from(r.counter.clone()),
                        Cell::from(r.value.to_string()),
                        Cell::from(format!("{:.0}", r.per_s)),
                    ])
                });
                f.render_widget(
                    Table::new(app_lines, [Constraint::Min(40), Constraint::Length(16), Constraint::Length(14)])
                        .header(Row::new(["app counter", "value", "per second"]).style(bold))
                        .block(Block::default().borders(Borders::ALL).title(title(
                            "app counters",
                            on_apps,
                            &apps_scroll,
                            apps.len(),
                            app_page,
                        ))),
                    app_area,
                );
            })?;
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossterm::event::KeyCode;

    #[test]
    fn scrolling_stays_within_the_rows() {
        let mut s = Scroll::default();
        s.apply(KeyCode::Up, 10, 25);
        assert_eq!(s.offset, 0);
        s.apply(KeyCode::PageDown, 10, 25);
        assert_eq!(s.offset, 10);
        s.apply(KeyCode::PageDown, 10, 25);
        assert_eq!(s.offset, 15, "the last page is full");
        s.apply(KeyCode::Home, 10, 25);
        s.apply(KeyCode::End, 10, 25);
        assert_eq!(s.offset, 15);
        s.apply(KeyCode::Down, 10, 5);
        assert_eq!(s.offset, 0, "all rows fit");
    }
}
