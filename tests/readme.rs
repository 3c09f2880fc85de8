//! The README's step-by-step "Writing a stage" shows the code of a crate that lives in
//! `examples/xor-stage/`, where the workspace compiles and tests it. This keeps the two
//! identical, so the README cannot drift from code that works.

use std::path::Path;

fn rust_blocks_of_section(readme: &str, heading: &str) -> Vec<String> {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    let rest = &readme[start + heading.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end]
        .split("```rust\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_owned())
        .collect()
}

#[test]
fn the_readme_shows_the_xor_crate_as_it_is() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = rust_blocks_of_section(&readme, "## Writing a stage");
    let files = [
        "examples/xor-stage/src/lib.rs",
        "examples/xor-stage/src/main.rs",
    ];
    assert_eq!(
        blocks.len(),
        files.len(),
        "the section should show lib.rs and main.rs"
    );
    for (block, file) in blocks.iter().zip(files) {
        let code = std::fs::read_to_string(root.join(file)).unwrap();
        assert_eq!(block, &code, "README and {file} differ: change both");
    }
}
