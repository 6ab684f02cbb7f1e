"""Imported by multiprocessing's forkserver, and nowhere else: the forkserver dies with
the process that started it (`lrpilot.processes.forkserver_context` preloads this).

Should that process die before this runs, the forkserver exits on its own: it has no
children yet, so its pipe from that process is at end of file.
"""

from lrpilot.processes import exit_with_parent

exit_with_parent()
