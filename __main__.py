from vocalprobe.cli import main

main()
