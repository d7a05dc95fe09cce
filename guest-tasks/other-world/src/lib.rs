//! `other_world.wasm`: a valid component of ANOTHER world, `other:greeter/greeter`.
//!
//! It imports nothing of taskhost and exports `greet` instead of `run`: the host must
//! reject it as "not a task module" (wrong world), never instantiate it as a task.

// The generated glue is unsafe by nature (the canonical ABI); this crate writes none.
#[allow(unsafe_code, missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package other:greeter;

            world greeter {
                export greet: func(name: string) -> string;
            }
        "#,
        world: "greeter",
    });
}

struct Greeter;

impl bindings::Guest for Greeter {
    fn greet(name: String) -> String {
        format!("hello, {name}")
    }
}

// The export glue is unsafe too (`export_name`, raw pointers); scoped to this module.
#[allow(unsafe_code)]
mod export {
    use super::Greeter;

    crate::bindings::export!(Greeter with_types_in crate::bindings);
}
