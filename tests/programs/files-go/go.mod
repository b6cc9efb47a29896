module filesgo

go 1.19
