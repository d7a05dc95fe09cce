//! The job message's rules, case by case.

use super::*;

#[test]
fn work_ignores_how_to_run_and_key_order() {
    let h = ModuleHash::of(b"m");
    let attr = BTreeMap::from([("module".to_owned(), h.to_string())]);
    let work = |doc: &str| JobMessage::parse(doc.as_bytes(), &attr, None).unwrap();
    let a = work(r#"{"job_id":"a","steps":3,"x":[1,2]}"#);
    let b = work(&format!(
        r#"{{"x":[1,2],"restart":true,"module":"{h}","steps":3,"job_id":"a"}}"#
    ));
    assert_eq!(a.work, b.work);
    assert!(!a.restart && b.restart && !b.upgrade_module);
    let c = work(r#"{"job_id":"a","steps":4,"x":[1,2]}"#);
    assert_ne!(a.work.input_sha256, c.work.input_sha256);
    assert_eq!(a.work.module, h.to_string());
    assert!(JobMessage::parse(br#"{"job_id":"a","restart":1}"#, &attr, None).is_err());
}

#[test]
fn inputs_are_names_to_keys_outside_the_hosts_prefixes() {
    let h = ModuleHash::of(b"m");
    let attr = BTreeMap::from([("module".to_owned(), h.to_string())]);
    let parse = |inputs: &str| {
        let doc = format!(r#"{{"job_id":"a","inputs":{inputs}}}"#);
        JobMessage::parse(doc.as_bytes(), &attr, None).map(|m| m.inputs)
    };
    let ok = parse(r#"{"data":"inputs/abc","b.txt":"my/set/b.txt"}"#).unwrap();
    assert_eq!(ok["data"], "inputs/abc");
    assert_eq!(ok.len(), 2);
    for (bad, why) in [
        (
            r#"{"data":"jobs/x/checkpoint"}"#,
            "host's own prefix `jobs/`",
        ),
        (
            r#"{"data":"modules/x.wasm"}"#,
            "host's own prefix `modules/`",
        ),
        (r#"{"data":"a/../jobs/x"}"#, "not a valid object key"),
        (r#"{"data":"/abs"}"#, "not a valid object key"),
        (r#"{"data":""}"#, "not a valid object key"),
        (r#"{"data":"a b"}"#, "not a valid object key"),
        (r#"{"data":7}"#, "must name an object key"),
        (r#"{".hidden":"k"}"#, "not a valid name"),
        (r#"["k"]"#, "inputs must be an object"),
    ] {
        let e = parse(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
    assert!(parse("{}").unwrap().is_empty());
}

/// (data, attributes, default module, expected module or a substring of the error)
type Case<'a> = (
    &'a str,
    BTreeMap<String, String>,
    Option<&'a ModuleHash>,
    Result<ModuleHash, &'a str>,
);

#[test]
fn messages() {
    let h = ModuleHash::of(b"m");
    let other = ModuleHash::of(b"other");
    let attr = |v: &str| BTreeMap::from([("module".to_owned(), v.to_owned())]);
    let none = BTreeMap::new();
    let cases: Vec<Case> = vec![
        (
            r#"{"job_id":"a","steps":1}"#,
            attr(&h.to_string()),
            None,
            Ok(h),
        ),
        (
            &*Box::leak(format!(r#"{{"job_id":"a","module":"{h}"}}"#).into_boxed_str()),
            attr(&other.to_string()),
            None,
            Ok(h),
        ),
        (r#"{"job_id":"a"}"#, none.clone(), Some(&other), Ok(other)),
        (r#"{"job_id":"a"}"#, none.clone(), None, Err("no module")),
        (
            r#"{"job_id":"a"}"#,
            attr("sha256:xyz"),
            None,
            Err("sha256:<64"),
        ),
        (
            r#"{"steps":1}"#,
            attr(&h.to_string()),
            None,
            Err("no job_id"),
        ),
        (
            r#"{"job_id":"a/b"}"#,
            attr(&h.to_string()),
            None,
            Err("may only contain"),
        ),
        (
            r#"{"job_id":7}"#,
            attr(&h.to_string()),
            None,
            Err("must be a string"),
        ),
        ("not json", attr(&h.to_string()), None, Err("not JSON")),
        ("[1]", attr(&h.to_string()), None, Err("not a JSON object")),
    ];
    for (data, attrs, default, want) in cases {
        let got = JobMessage::parse(data.as_bytes(), &attrs, default);
        match (got, want) {
            (Ok(m), Ok(module)) => {
                assert_eq!(m.module, module, "{data}");
                assert_eq!(m.input, data);
            }
            (Err(e), Err(sub)) => assert!(e.contains(sub), "{data}: {e}"),
            (got, want) => panic!("{data}: got {got:?}, want {want:?}"),
        }
    }
    assert!(
        JobMessage::parse(&[0xff], &none, Some(&h))
            .unwrap_err()
            .contains("UTF-8")
    );
}
