fn main() -> std::process::ExitCode {
    // Restore the default SIGPIPE action, which Rust's runtime ignores, so
    // that `visage-dr snapshots | head` ends quietly instead of panicking on
    // a closed pipe.
    // SAFETY: called once at start-up before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    visage_dr::cli::main()
}
