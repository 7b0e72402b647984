"""Per-VM nftables firewall: render (pure), apply (one libnftables transaction),
state (per-VM records keyed by domain UUID), stage (hook actions), cli."""
