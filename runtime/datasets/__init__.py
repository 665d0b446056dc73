"""Dataset tools: preparers (folders, Watkins, InfantMarmosetsVox, Abzaliev), the synthetic embedded default,
seeded splits and the dataset summary (`vocalprobe data`)."""
