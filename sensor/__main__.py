from sensor.cli import main

main()
