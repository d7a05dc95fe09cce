//! The `submitted/<batch id>` record (docs/design.md §4): the job ids one `submit` batch
//! published, and the module their messages name.
//!
//! Text, one item a line: `module sha256:<hex>` names the module of the job ids after it
//! (until the next such line); every other non-empty line is a job id. A record written
//! before modules were recorded holds ids only (their module is unknown), and a reader that
//! knows ids only skips the `module` line, which is no job id (a job id has no space).

use crate::ids::{JobId, ModuleHash};

/// The line that names the module of the ids after it.
const MODULE_LINE: &str = "module ";

/// The record of `jobs`, all naming `module`.
pub fn encode<'a>(module: &ModuleHash, jobs: impl IntoIterator<Item = &'a JobId>) -> String {
    let mut text = format!("{MODULE_LINE}{module}\n");
    for id in jobs {
        text.push_str(id.as_str());
        text.push('\n');
    }
    text
}

/// Each job id a record names, with the module named before it (`None` in a record from
/// before modules were recorded). Lines that are neither are skipped.
pub fn decode(text: &str) -> Vec<(JobId, Option<ModuleHash>)> {
    let mut module = None;
    let mut jobs = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(hash) = line.strip_prefix(MODULE_LINE) {
            module = hash.trim().parse().ok();
        } else if let Ok(id) = line.parse::<JobId>() {
            jobs.push((id, module));
        }
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_its_jobs_and_their_module() {
        let m = ModuleHash::of(b"m");
        let ids: Vec<JobId> = ["a", "b-1"].iter().map(|s| s.parse().unwrap()).collect();
        let text = encode(&m, &ids);
        assert_eq!(
            decode(&text),
            vec![(ids[0].clone(), Some(m)), (ids[1].clone(), Some(m))]
        );
        // The reader that knows ids only sees the same ids: the module line is no job id.
        let ids_only: Vec<&str> = text
            .lines()
            .filter(|l| l.trim().parse::<JobId>().is_ok())
            .collect();
        assert_eq!(ids_only, ["a", "b-1"]);
        // A record from before modules were recorded; and one naming two modules.
        assert_eq!(
            decode("a\n\nb-1\n"),
            vec![(ids[0].clone(), None), (ids[1].clone(), None)]
        );
        let n = ModuleHash::of(b"n");
        let two = format!("{}{}", encode(&m, &ids[..1]), encode(&n, &ids[1..]));
        assert_eq!(
            decode(&two),
            vec![(ids[0].clone(), Some(m)), (ids[1].clone(), Some(n))]
        );
    }
}
