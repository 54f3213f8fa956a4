//! Test plugin that exports `yoi:plugin/tool` of a version this host does
//! not speak, so the load-time version check has something to refuse.

wit_bindgen::generate!({
    inline: "
        package yoi:plugin@0.2.0;
        interface tool {
            describe: func() -> list<string>;
        }
        world plugin {
            export tool;
        }
    ",
});

struct Future;

impl exports::yoi::plugin::tool::Guest for Future {
    fn describe() -> Vec<String> {
        vec!["Later".to_string()]
    }
}

export!(Future);
