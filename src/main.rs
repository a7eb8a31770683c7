fn main() -> std::process::ExitCode {
    visage_dr::cli::main()
}
