use std::process::ExitCode;

fn main() -> ExitCode {
    use cygvm::events::{Outcome, finished};
    match cygvm::cli::run() {
        Ok(code) => {
            finished(Outcome::Succeeded);
            code
        }
        Err(err) if err.downcast_ref::<cygvm::phases::Interrupted>().is_some() => {
            let exit_status = cygvm::phases::INTERRUPTED_EXIT;
            finished(Outcome::Failed {
                exit_status,
                error: &err,
            });
            eprintln!("cygvm: {err}");
            ExitCode::from(exit_status)
        }
        Err(err) => {
            finished(Outcome::Failed {
                exit_status: 1,
                error: &err,
            });
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
