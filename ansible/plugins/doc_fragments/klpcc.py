# Copyright: klpcc
# GNU General Public License v2.0 (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # the options every module of the collection has: where klpcc keeps and finds things
    DOCUMENTATION = r"""
options:
  state_dir:
    description: The host's store (C(KLPCC_STATE_DIR)).
    type: path
  socket_dir:
    description: Where the processes' runtimes listen (C(KLPCC_SOCKET_DIR)).
    type: path
  klpcc:
    description: "The klpcc command on the host (default: from PATH)."
    type: path
"""
