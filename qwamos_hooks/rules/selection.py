"""Rules about how the policy applies to a domain."""

from . import rule


@rule("QW001", "error", "domain metadata asks for a profile the policy does not permit",
      "List the profile under an 'assign: - metadata: [...]' entry of the policy, or remove "
      "the profile attribute from <qwamos:vm> in the domain's <metadata>.")
def check_metadata_profile(domain, profile, ctx):
    """A domain may name its profile in ``<metadata><qwamos:vm profile='tor'/>``,
    but only among the profiles an ``assign`` entry with ``metadata:`` lists.
    Otherwise whoever edits the XML could pick a weaker profile than the
    administrator chose. The domain is then checked against the default
    profile and this finding blocks it."""
    if ctx.selection_problem:
        yield (domain.metadata.line if domain.metadata else domain.line, None, ctx.selection_problem)
