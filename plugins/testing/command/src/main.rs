//! A WASI command, not a tool plugin: the host must refuse to load it.
fn main() {
    println!("I am not a tool plugin");
}
