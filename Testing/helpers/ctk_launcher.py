"""A stand-in for ``PythonSlicer``: CTK's application launcher as it runs a Python script.

``python ctk_launcher.py ARGS…`` starts ``python ARGS…`` as its child with the same standard output and
error (QProcess::ForwardedChannels), installs no signal handler (so SIGTERM ends the launcher and leaves
the child running, reparented), and exits with the child's exit code when the child exits — what
commontk/AppLauncher's ``ctkAppLauncherPrivate::runProcess`` / ``applicationFinished`` do
(``Base/ctkAppLauncher.cpp``). With ``CTK_LAUNCHER_CHILD_PID`` set, the child's pid is written to that
file, for a test to find the process.
"""

import os
import subprocess
import sys

child = subprocess.Popen([sys.executable, *sys.argv[1:]])
if os.environ.get("CTK_LAUNCHER_CHILD_PID"):
    with open(os.environ["CTK_LAUNCHER_CHILD_PID"], "w") as pid_file:
        pid_file.write(str(child.pid))
sys.exit(child.wait())
