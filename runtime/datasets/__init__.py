"""Dataset preparers (folders, Watkins, InfantMarmosetsVox, Abzaliev) and the synthetic embedded default."""
