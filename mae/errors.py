"""Errors meant for the user: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input (key, file or value); the message names it in one line."""


class Preempted(Exception):
    """A stop signal (SIGTERM, SIGUSR1) arrived during training: the state after the last optimizer step is in
    the checkpoint. The CLI exits with :data:`PREEMPTED_EXIT`; rerunning the same command resumes."""


#: exit code of a preempted stage (EX_TEMPFAIL): a retry (Snakemake `retries`, SLURM requeue) resumes it
PREEMPTED_EXIT = 75
