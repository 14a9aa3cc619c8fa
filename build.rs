fn main() {
    // The migrations are embedded by `sqlx::migrate!`: a file added to them must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
}
