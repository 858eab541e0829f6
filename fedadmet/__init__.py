"""fedadmet's front door: the ``fedadmet`` command (:mod:`fedadmet.cli.main`).

Nothing else lives here. The work is in the role packages (``coordinator``,
``participant``, ``protocols``, ``chem``, ``simulations``); nothing imports this
package.
"""
