use std::process::ExitCode;

fn main() -> ExitCode {
    cygvm::cli::init_logging();
    match cygvm::cli::run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
