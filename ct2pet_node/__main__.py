from ct2pet_node.cli import main

main()
