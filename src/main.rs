use std::process::ExitCode;

fn main() -> ExitCode {
    match cygvm::cli::run() {
        Ok(code) => code,
        Err(err) if err.downcast_ref::<cygvm::phases::Interrupted>().is_some() => {
            eprintln!("cygvm: {err}");
            ExitCode::from(cygvm::phases::INTERRUPTED_EXIT)
        }
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
